//! A real Rust client, rumqttc, against midge: QoS 0/1/2 both ways and retained messages,
//! with one shard and two.

mod common;

use common::*;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::time::timeout;

fn client(port: u16, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(std::time::Duration::from_secs(30));
    AsyncClient::new(options, 64)
}

/// Polls until a PUBLISH arrives and returns (topic, payload, qos, retain).
async fn next_publish(events: &mut EventLoop) -> (String, Vec<u8>, QoS, bool) {
    loop {
        match timeout(DEADLINE, events.poll())
            .await
            .expect("no event in time")
            .expect("connection error")
        {
            Event::Incoming(Packet::Publish(p)) => {
                return (p.topic, p.payload.to_vec(), p.qos, p.retain)
            }
            _ => continue,
        }
    }
}

async fn until_suback(events: &mut EventLoop) {
    loop {
        if let Event::Incoming(Packet::SubAck(_)) =
            timeout(DEADLINE, events.poll()).await.unwrap().unwrap()
        {
            return;
        }
    }
}

#[test]
fn rumqttc_publishes_and_subscribes() {
    Broker::each_threads(&[], |broker| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (sub, mut sub_events) = client(broker.port, "rumqttc-sub");
            sub.subscribe("rust/#", QoS::ExactlyOnce).await.unwrap();
            until_suback(&mut sub_events).await;
            let (publisher, mut pub_events) = client(broker.port, "rumqttc-pub");
            // Drive the publisher's event loop in the background.
            let driver = tokio::spawn(async move { while pub_events.poll().await.is_ok() {} });
            for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                .into_iter()
                .enumerate()
            {
                publisher
                    .publish(format!("rust/{i}"), qos, false, vec![i as u8; 3])
                    .await
                    .unwrap();
                let got = next_publish(&mut sub_events).await;
                assert_eq!(got, (format!("rust/{i}"), vec![i as u8; 3], qos, false));
            }
            publisher
                .publish("rust/kept", QoS::AtLeastOnce, true, b"retained".to_vec())
                .await
                .unwrap();
            assert_eq!(next_publish(&mut sub_events).await.1, b"retained");
            let (late, mut late_events) = client(broker.port, "rumqttc-late");
            late.subscribe("rust/kept", QoS::AtLeastOnce).await.unwrap();
            let got = next_publish(&mut late_events).await;
            assert_eq!(
                got,
                (
                    "rust/kept".to_string(),
                    b"retained".to_vec(),
                    QoS::AtLeastOnce,
                    true
                )
            );
            driver.abort();
        });
    });
}
