//! Rebalances with the KIP-848 consumer protocol (`group.protocol=consumer`, assignments made
//! by the broker): three members join and leave while 100k messages flow; nothing is lost and
//! no partition is processed by two members at once. Needs a broker with KIP-848 (the
//! embedded cluster; not Tansu).

mod rebalance;

use std::time::Duration;

use karafka_core::KafkaSettings;
use karafka_testing::{Capability, TestBroker};

#[test]
fn members_join_and_leave_without_loss_or_overlap() {
    let Some(broker) = TestBroker::require(&[Capability::ConsumerProtocol]) else {
        return;
    };
    if let Some(cluster) = broker.embedded_cluster() {
        // In this protocol the broker owns the session timeout and heartbeat interval.
        cluster.set_consumer_group_session_timeout(Duration::from_secs(6));
        cluster.set_consumer_group_heartbeat_interval(Duration::from_millis(500));
    }
    let mut settings = KafkaSettings::new();
    for (k, v) in broker.consumer_settings("unused").iter() {
        // Client-side group timing does not apply to group.protocol=consumer.
        if !matches!(
            k,
            "group.id" | "session.timeout.ms" | "heartbeat.interval.ms"
        ) {
            settings.set(k, v);
        }
    }
    settings.set("group.protocol", "consumer");
    let observed = rebalance::scenario(&broker, settings);
    rebalance::assert_sound(&observed);
}
