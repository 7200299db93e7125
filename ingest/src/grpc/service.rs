use std::{pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt, stream::FuturesOrdered};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;
use vigil_proto::v1::{
    SubmitReadingsRequest, SubmitReadingsResponse, ingest_service_server::IngestService,
};

use super::{auth, convert, status::ApiError};
use crate::{
    config::ValidationSettings,
    domain::{Channel, validate::Context},
    limits::DeviceLimits,
    store::{Pool, writer::WriterHandle},
    submission::Submission,
};

/// Batches of one stream being committed at once; more are not read until one completes,
/// which pushes back on the client through HTTP/2 flow control.
const STREAM_WINDOW: usize = 8;

#[derive(Clone)]
pub struct Ingest {
    pool: Pool,
    writer: WriterHandle,
    validation: ValidationSettings,
    limits: Arc<DeviceLimits>,
    /// Cancelled at shutdown: streams stop reading, finish what they hold, and end.
    stop: CancellationToken,
}

#[derive(Clone, Copy)]
enum WhenFull {
    Refuse,
    Wait,
}

impl Ingest {
    pub fn new(
        pool: Pool,
        writer: WriterHandle,
        validation: ValidationSettings,
        limits: Arc<DeviceLimits>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            pool,
            writer,
            validation,
            limits,
            stop,
        }
    }

    async fn submit(
        &self,
        device_id: Uuid,
        request: SubmitReadingsRequest,
        when_full: WhenFull,
    ) -> Result<SubmitReadingsResponse, ApiError> {
        if !request.device_id.is_empty() && request.device_id != device_id.to_string() {
            return Err(ApiError::PermissionDenied(format!(
                "this token belongs to device {device_id}; it cannot submit for {}",
                request.device_id
            )));
        }
        let limit = self.validation.max_readings_per_submission;
        if request.readings.len() > limit {
            return Err(ApiError::InvalidArgument(format!(
                "{} readings in one batch; at most {limit}",
                request.readings.len()
            )));
        }
        self.limits
            .check(device_id, request.readings.len())
            .map_err(ApiError::RateLimited)?;
        let received_at = OffsetDateTime::now_utc();
        let ctx = Context {
            device_id,
            channel: Channel::Grpc,
            received_at,
            rules: &self.validation,
        };
        let mut submission = Submission::new(Channel::Grpc, Some(device_id), received_at, None);
        submission.items = request
            .readings
            .into_iter()
            .map(|r| convert::item(r, &ctx))
            .collect();
        let outcomes = match when_full {
            WhenFull::Refuse => self.writer.try_submit(submission).await?,
            WhenFull::Wait => self.writer.submit(submission).await?,
        };
        Ok(SubmitReadingsResponse {
            batch_id: request.batch_id,
            results: outcomes
                .iter()
                .enumerate()
                .map(|(i, o)| convert::result(i, o))
                .collect(),
        })
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<SubmitReadingsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl IngestService for Ingest {
    async fn submit_readings(
        &self,
        request: Request<SubmitReadingsRequest>,
    ) -> Result<Response<SubmitReadingsResponse>, Status> {
        let device_id = auth::device_of(&self.pool, request.metadata()).await?;
        let response = self
            .submit(device_id, request.into_inner(), WhenFull::Refuse)
            .await?;
        Ok(Response::new(response))
    }

    type StreamReadingsStream = ResultStream;

    async fn stream_readings(
        &self,
        request: Request<Streaming<SubmitReadingsRequest>>,
    ) -> Result<Response<Self::StreamReadingsStream>, Status> {
        let device_id = auth::device_of(&self.pool, request.metadata()).await?;
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_WINDOW);
        let service = self.clone();
        tokio::spawn(async move {
            let mut inflight = FuturesOrdered::new();
            let mut reading = true;
            loop {
                tokio::select! {
                    biased;
                    Some(result) = inflight.next(), if !inflight.is_empty() => {
                        let result: Result<_, ApiError> = result;
                        let failed = result.is_err();
                        if tx.send(result.map_err(Status::from)).await.is_err() || failed {
                            return;
                        }
                    }
                    _ = service.stop.cancelled(), if reading => reading = false,
                    message = inbound.message(), if reading && inflight.len() < STREAM_WINDOW => {
                        match message {
                            Ok(Some(batch)) => {
                                let service = service.clone();
                                inflight.push_back(async move {
                                    service.submit(device_id, batch, WhenFull::Wait).await
                                });
                            }
                            Ok(None) | Err(_) => reading = false,
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
