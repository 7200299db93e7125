//! Code generated from `proto/vigil/v1/*.proto`, plus the encoded descriptor set that the
//! gRPC reflection service publishes. No domain logic lives here.

pub mod v1 {
    tonic::include_proto!("vigil.v1");
}

/// Encoded `FileDescriptorSet` of every Vigil proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("vigil_descriptor");
