//! Rebalances with the cooperative-sticky protocol: three members join and leave while 100k messages
//! flow; nothing is lost and no partition is processed by two members at once.

mod rebalance;

use karafka_core::KafkaSettings;
use karafka_testing::{Capability, TestBroker};

#[test]
fn members_join_and_leave_without_loss_or_overlap() {
    let Some(broker) = TestBroker::require(&[Capability::CooperativeRebalances]) else {
        return;
    };
    let mut settings = KafkaSettings::new();
    for (k, v) in broker.consumer_settings("unused").iter() {
        if k != "group.id" {
            settings.set(k, v);
        }
    }
    settings.set("partition.assignment.strategy", "cooperative-sticky");
    let observed = rebalance::scenario_after_first_assignment(&broker, settings);
    rebalance::assert_sound(&observed);
}
