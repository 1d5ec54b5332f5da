//! The standard `grpc.health.v1.Health` service: `baton.v1.Chat` is SERVING on the leader and NOT_SERVING
//! elsewhere (followers and candidates refuse client calls), following every role change; the server as a
//! whole ("") and `baton.v1.Replication` are SERVING while the process serves. On shutdown every status
//! turns NOT_SERVING and the Watch streams end.

use baton_proto::v1::chat_server::ChatServer;
use baton_proto::v1::replication_server::ReplicationServer;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::chat_service::ChatService;
use super::replication_service::ReplicationService;

/// The names health checks ask about, as tonic serves them.
pub const CHAT: &str = <ChatServer<ChatService> as NamedService>::NAME;
pub const REPLICATION: &str = <ReplicationServer<ReplicationService> as NamedService>::NAME;

/// Sets the statuses for the current role (before the server serves, so no check finds the name unknown),
/// then spawns a task that follows `leading` until shutdown.
pub async fn follow_role(
    mut reporter: HealthReporter,
    mut leading: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    reporter
        .set_service_status(REPLICATION, ServingStatus::Serving)
        .await;
    let status = |leads: bool| {
        if leads {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let now = *leading.borrow_and_update();
    reporter.set_service_status(CHAT, status(now)).await;
    tokio::spawn(async move {
        loop {
            let stopping = tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    false
                }
                _ = shutdown.wait_for(|s| *s) => true,
            };
            if stopping {
                // Watchers hear that the node stops serving, then their streams end: dropping a
                // status's sender ends its Watch streams, which would otherwise hold the graceful
                // shutdown open for as long as their clients keep them.
                for name in [CHAT, REPLICATION, ""] {
                    reporter
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                    reporter.clear_service_status(name).await;
                }
                return;
            }
            let leads = *leading.borrow_and_update();
            reporter.set_service_status(CHAT, status(leads)).await;
        }
    });
}
