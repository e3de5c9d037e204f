//! Scenarios: who publishes where, who subscribes to what, and which streams each receiving
//! group must see in full.

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N pairs, one topic each.
    P2p,
    /// N publishers on their own topics, one wildcard subscriber (or a `$share` group).
    FanIn,
    /// A few publishers on one topic, N subscribers.
    FanOut,
    /// Publishers on many topics, N subscribers on `+` and `#` filters.
    Wildcard,
    /// N clients connect as fast as the broker lets them, then idle: CONNACK latency, rate,
    /// and broker memory per connection.
    ConnStorm,
    /// p2p traffic while other clients connect and disconnect continuously (--churn-rate).
    Churn,
}

#[derive(Clone, Debug)]
pub struct ClientPlan {
    pub client_id: String,
    /// Topic, publisher number (its stream), QoS.
    pub publish: Option<(String, u32, u8)>,
    /// Filter, receiving group, QoS.
    pub subscribe: Option<(String, u32, u8)>,
}

pub struct Plan {
    pub clients: Vec<ClientPlan>,
    /// (receiving group, publisher) pairs that must see every message.
    pub expected: Vec<(u32, u32)>,
    pub publishers: u32,
}

pub struct Shape {
    pub scenario: Scenario,
    pub clients: u32,
    pub publishers: u32,
    pub share: u32,
    /// QoS per publisher: a fixed value, or `None` for a mix (0, 1, 2 in turn).
    pub qos: Option<u8>,
    pub run_id: String,
}

pub fn plan(shape: &Shape) -> Plan {
    let id = |role: &str, i: u32| format!("lg-{}-{role}{i}", shape.run_id);
    let qos = |publisher: u32| shape.qos.unwrap_or((publisher % 3) as u8);
    // Subscribers ask for QoS 2 in a mix, so that each message arrives at its own QoS.
    let sub_qos = shape.qos.unwrap_or(2);
    let mut clients = Vec::new();
    let mut expected = Vec::new();
    let publisher = |clients: &mut Vec<ClientPlan>, i: u32, topic: String| {
        clients.push(ClientPlan {
            client_id: id("p", i),
            publish: Some((topic, i, qos(i))),
            subscribe: None,
        });
    };
    let subscriber = |clients: &mut Vec<ClientPlan>, j: u32, filter: String, group: u32| {
        clients.push(ClientPlan {
            client_id: id("s", j),
            publish: None,
            subscribe: Some((filter, group, sub_qos)),
        });
    };
    let publishers;
    match shape.scenario {
        Scenario::P2p | Scenario::Churn => {
            publishers = shape.clients;
            for i in 0..shape.clients {
                // Subscribers first, so that they are ready before anything is sent.
                subscriber(&mut clients, i, format!("lg/{}/p2p/{i}", shape.run_id), i);
                publisher(&mut clients, i, format!("lg/{}/p2p/{i}", shape.run_id));
                expected.push((i, i));
            }
        }
        Scenario::FanIn => {
            publishers = shape.clients;
            let filter = format!("lg/{}/in/+", shape.run_id);
            if shape.share == 0 {
                subscriber(&mut clients, 0, filter, 0);
            } else {
                for j in 0..shape.share {
                    subscriber(&mut clients, j, format!("$share/lg/{filter}"), 0);
                }
            }
            for i in 0..shape.clients {
                publisher(&mut clients, i, format!("lg/{}/in/{i}", shape.run_id));
                expected.push((0, i));
            }
        }
        Scenario::FanOut => {
            publishers = shape.publishers.max(1);
            for j in 0..shape.clients {
                subscriber(&mut clients, j, format!("lg/{}/out", shape.run_id), j);
                for i in 0..publishers {
                    expected.push((j, i));
                }
            }
            for i in 0..publishers {
                publisher(&mut clients, i, format!("lg/{}/out", shape.run_id));
            }
        }
        Scenario::Wildcard => {
            publishers = shape.publishers.max(1);
            for j in 0..shape.clients {
                let filter = if j % 2 == 0 {
                    format!("lg/{}/wc/+/data", shape.run_id)
                } else {
                    format!("lg/{}/wc/#", shape.run_id)
                };
                subscriber(&mut clients, j, filter, j);
                for i in 0..publishers {
                    expected.push((j, i));
                }
            }
            for i in 0..publishers {
                publisher(&mut clients, i, format!("lg/{}/wc/{i}/data", shape.run_id));
            }
        }
        Scenario::ConnStorm => {
            publishers = 0;
            for i in 0..shape.clients {
                clients.push(ClientPlan {
                    client_id: id("c", i),
                    publish: None,
                    subscribe: None,
                });
            }
        }
    }
    Plan {
        clients,
        expected,
        publishers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(scenario: Scenario, clients: u32, publishers: u32, share: u32) -> Shape {
        Shape {
            scenario,
            clients,
            publishers,
            share,
            qos: Some(1),
            run_id: "t".into(),
        }
    }

    #[test]
    fn scenarios_expect_the_right_streams() {
        let p = plan(&shape(Scenario::P2p, 3, 0, 0));
        assert_eq!((p.clients.len(), p.expected.len(), p.publishers), (6, 3, 3));
        let p = plan(&shape(Scenario::FanIn, 4, 0, 2));
        assert_eq!((p.clients.len(), p.expected.len()), (6, 4));
        assert!(p.clients[0]
            .subscribe
            .as_ref()
            .unwrap()
            .0
            .starts_with("$share/lg/"));
        let p = plan(&shape(Scenario::FanOut, 10, 2, 0));
        assert_eq!(
            (p.clients.len(), p.expected.len(), p.publishers),
            (12, 20, 2)
        );
        let p = plan(&shape(Scenario::Wildcard, 4, 3, 0));
        assert_eq!(p.expected.len(), 12);
    }
}
