//! MQTT front-end: a persistent shared-subscription session, acknowledgements only after
//! commit, and a per-message result published back to the device.

pub mod decode;
pub mod subscriber;
pub mod topic;

pub use subscriber::MqttFrontend;
pub use topic::Topics;
