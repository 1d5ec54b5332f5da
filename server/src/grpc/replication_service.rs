//! `baton.v1.Replication`: the peer API. Every call must carry the cluster secret.

use std::sync::Arc;

use baton_proto::v1 as pb;
use baton_proto::v1::replication_server::Replication;
use tonic::{Request, Response, Status, Streaming};

use crate::Node;
use crate::replication::{follower, leader};
use crate::store::digest;

pub struct ReplicationService {
    node: Arc<Node>,
}

impl ReplicationService {
    pub fn new(node: Arc<Node>) -> Self {
        ReplicationService { node }
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    type RegisterFollowerStream = leader::RegisterStream;

    async fn register_follower(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<Self::RegisterFollowerStream>, Status> {
        self.node.replication.authenticate(&req)?;
        let stream = leader::register(self.node.clone(), req.into_inner()).await?;
        Ok(Response::new(stream))
    }

    type AcceptUpdatesStream = follower::AckStream;

    async fn accept_updates(
        &self,
        req: Request<Streaming<pb::UpdateBatch>>,
    ) -> Result<Response<Self::AcceptUpdatesStream>, Status> {
        self.node.replication.authenticate(&req)?;
        Ok(Response::new(follower::accept(
            self.node.clone(),
            req.into_inner(),
        )))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::NodeStatus>, Status> {
        self.node.replication.authenticate(&req)?;
        Ok(Response::new(self.node.replication.status()))
    }

    async fn digest(
        &self,
        req: Request<pb::DigestRequest>,
    ) -> Result<Response<pb::DigestResponse>, Status> {
        self.node.replication.authenticate(&req)?;
        let (applied_epoch, applied_seq) = self.node.replication.applied();
        let d = self.node.readers.run(digest::digest).await?;
        Ok(Response::new(pb::DigestResponse {
            applied_epoch,
            applied_seq,
            sha256: d.sha256,
            users: d.users,
            messages: d.messages,
            deleted_messages: d.deleted_messages,
        }))
    }
}
