//! librdkafka statistics, decoded.
//!
//! When a client's `statistics.interval.ms` is above 0, librdkafka emits a JSON document at
//! that interval; karafka-rs decodes it into [`Statistics`] and emits `statistics.emitted`.
//! Only the fields operators use are decoded (every one defaults when absent); the names and
//! meanings are librdkafka's (see its `STATISTICS.md`).

use std::collections::BTreeMap;

use serde::Deserialize;

/// One statistics report of a librdkafka client.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
#[non_exhaustive]
pub struct Statistics {
    /// librdkafka's handle name (`client.id#producer-1`).
    pub name: String,
    /// The configured `client.id`.
    pub client_id: String,
    /// `producer` or `consumer`.
    #[serde(rename = "type")]
    pub client_type: String,
    /// librdkafka's monotonic clock, µs.
    pub ts: i64,
    /// Wall clock, seconds since the epoch.
    pub time: i64,
    /// Time since the client was created, µs.
    pub age: i64,
    /// Operations waiting in the application's queue.
    pub replyq: i64,
    /// Messages in producer queues.
    pub msg_cnt: u64,
    /// Bytes of messages in producer queues.
    pub msg_size: u64,
    /// Producer queue limit, messages.
    pub msg_max: u64,
    /// Producer queue limit, bytes.
    pub msg_size_max: u64,
    /// Requests sent to brokers.
    pub tx: i64,
    /// Bytes sent to brokers.
    pub tx_bytes: i64,
    /// Responses received from brokers.
    pub rx: i64,
    /// Bytes received from brokers.
    pub rx_bytes: i64,
    /// Messages produced.
    pub txmsgs: i64,
    /// Bytes of messages produced.
    pub txmsg_bytes: i64,
    /// Messages consumed.
    pub rxmsgs: i64,
    /// Bytes of messages consumed.
    pub rxmsg_bytes: i64,
    /// Per broker, by librdkafka's broker name.
    pub brokers: BTreeMap<String, BrokerStatistics>,
    /// Per topic.
    pub topics: BTreeMap<String, TopicStatistics>,
    /// Consumer group state (consumers in a group).
    pub cgrp: Option<GroupStatistics>,
    /// Idempotence and transaction state (producers).
    pub eos: Option<EosStatistics>,
}

impl Statistics {
    /// Decodes librdkafka's statistics JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// Consumer lag per assigned partition (`topic`, `partition`, lag), taken from
    /// `consumer_lag_stored` when known, else `consumer_lag`; partitions whose lag librdkafka
    /// does not know (`-1`) and the internal `-1` partition are left out.
    pub fn consumer_lags(&self) -> Vec<(String, i32, i64)> {
        let mut lags = Vec::new();
        for (topic, t) in &self.topics {
            for p in t.partitions.values() {
                if p.partition < 0 {
                    continue;
                }
                let lag = if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else {
                    p.consumer_lag
                };
                if lag >= 0 {
                    lags.push((topic.clone(), p.partition, lag));
                }
            }
        }
        lags
    }
}

/// Statistics of one broker connection.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
#[non_exhaustive]
pub struct BrokerStatistics {
    /// `host:port/id`.
    pub name: String,
    /// Broker id (-1 for bootstrap connections).
    pub nodeid: i32,
    /// Connection state (`UP`, `DOWN`, ...).
    pub state: String,
    /// Requests waiting to be sent.
    pub outbuf_cnt: i64,
    /// Requests in flight.
    pub waitresp_cnt: i64,
    /// Requests sent.
    pub tx: u64,
    /// Send errors.
    pub txerrs: u64,
    /// Request retries.
    pub txretries: u64,
    /// Requests timed out.
    pub req_timeouts: u64,
    /// Responses received.
    pub rx: u64,
    /// Receive errors.
    pub rxerrs: u64,
    /// Round-trip time, µs.
    pub rtt: Option<Window>,
    /// Time messages wait in librdkafka's internal queues, µs.
    pub int_latency: Option<Window>,
}

/// A rolling window of samples (µs for times).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(default)]
#[non_exhaustive]
pub struct Window {
    /// Smallest sample.
    pub min: i64,
    /// Largest sample.
    pub max: i64,
    /// Average.
    pub avg: i64,
    /// Number of samples.
    pub cnt: i64,
    /// Median.
    pub p50: i64,
    /// 95th percentile.
    pub p95: i64,
    /// 99th percentile.
    pub p99: i64,
}

/// Statistics of one topic.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
#[non_exhaustive]
pub struct TopicStatistics {
    /// Topic name.
    pub topic: String,
    /// Age of the topic's metadata, ms.
    pub metadata_age: i64,
    /// Per partition, keyed by the partition number as librdkafka writes it (`"0"`, `"-1"`).
    pub partitions: BTreeMap<String, PartitionStatistics>,
}

/// Statistics of one partition.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
#[non_exhaustive]
pub struct PartitionStatistics {
    /// Partition number (-1: librdkafka's internal unassigned partition).
    pub partition: i32,
    /// Leader broker id.
    pub leader: i32,
    /// Messages waiting in the producer queue.
    pub msgq_cnt: i64,
    /// Messages ready to send.
    pub xmit_msgq_cnt: i64,
    /// Messages in the consumer's fetch queue.
    pub fetchq_cnt: i64,
    /// Fetch state (`active`, `none`, ...).
    pub fetch_state: String,
    /// Next offset the application will see.
    pub app_offset: i64,
    /// Offset stored for commit.
    pub stored_offset: i64,
    /// Last committed offset.
    pub committed_offset: i64,
    /// Partition low watermark.
    pub lo_offset: i64,
    /// Partition high watermark.
    pub hi_offset: i64,
    /// Last stable offset.
    pub ls_offset: i64,
    /// High watermark minus the committed offset (-1 when unknown).
    pub consumer_lag: i64,
    /// High watermark minus the stored offset (-1 when unknown).
    pub consumer_lag_stored: i64,
    /// Messages produced.
    pub txmsgs: u64,
    /// Messages consumed.
    pub rxmsgs: u64,
}

/// Consumer group state.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
#[non_exhaustive]
pub struct GroupStatistics {
    /// Group state (`up`, ...).
    pub state: String,
    /// Join state (`steady`, ...).
    pub join_state: String,
    /// Time since the last rebalance, ms.
    pub rebalance_age: i64,
    /// Number of rebalances.
    pub rebalance_cnt: i64,
    /// Partitions assigned.
    pub assignment_size: i32,
}

/// Idempotent and transactional producer state.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
#[non_exhaustive]
pub struct EosStatistics {
    /// Idempotence state (`Assigned`, ...).
    pub idemp_state: String,
    /// Transaction state (`Ready`, `InTransaction`, ...).
    pub txn_state: String,
    /// Producer id (-1 when none).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_librdkafka_json_and_computes_lag() {
        let json = br#"{
            "name": "rdkafka#consumer-1", "client_id": "rdkafka", "type": "consumer",
            "ts": 1, "time": 2, "age": 3, "replyq": 0, "msg_cnt": 0, "unknown_field": 1,
            "brokers": {"127.0.0.1:9092/1": {"name": "127.0.0.1:9092/1", "nodeid": 1, "state": "UP",
                        "rtt": {"min": 10, "max": 30, "avg": 20, "cnt": 5, "p50": 19, "p95": 29, "p99": 30}}},
            "topics": {"orders": {"topic": "orders", "partitions": {
                "0": {"partition": 0, "hi_offset": 100, "consumer_lag": 40, "consumer_lag_stored": 30},
                "1": {"partition": 1, "hi_offset": 10, "consumer_lag": 5, "consumer_lag_stored": -1},
                "2": {"partition": 2, "consumer_lag": -1, "consumer_lag_stored": -1},
                "-1": {"partition": -1, "consumer_lag": 7}}}},
            "cgrp": {"state": "up", "join_state": "steady", "rebalance_cnt": 2, "assignment_size": 3}
        }"#;
        let stats = Statistics::from_json(json).unwrap();
        assert_eq!(stats.client_type, "consumer");
        assert_eq!(stats.brokers["127.0.0.1:9092/1"].rtt.unwrap().p99, 30);
        assert_eq!(stats.cgrp.as_ref().unwrap().assignment_size, 3);
        let lags = stats.consumer_lags();
        assert_eq!(
            lags,
            [("orders".to_owned(), 0, 30), ("orders".to_owned(), 1, 5)]
        );
    }

    #[test]
    fn rejects_non_json() {
        assert!(Statistics::from_json(b"not json").is_err());
    }
}
