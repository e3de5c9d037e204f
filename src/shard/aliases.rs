//! Topic aliases on the broker's sends (MQTT 5.0 §3.3.2.3.4), per connection: up to the
//! client's Topic Alias Maximum [MQTT-3.3.2-8], and up to `OUT_ALIAS_BYTES_MAX` bytes of
//! topics, so that a client allowing 65,535 aliases cannot make the broker keep a copy of
//! every long topic it was sent. When the table is full, the oldest aliases are given to new
//! topics (the PUBLISH that does so carries the topic again, which is how MQTT 5.0 changes a
//! mapping); a topic longer than the whole table goes without an alias.

use hashbrown::HashMap;

use crate::codec::MqttStr;
use crate::limits::OUT_ALIAS_BYTES_MAX;

/// What a table costs per topic beyond the topic's bytes (its map entry and its slot).
const ENTRY_BYTES: usize = 48;

#[derive(Default)]
pub struct OutAliases {
    by_topic: HashMap<MqttStr, u16>,
    /// Each alias's topic, alias 1 at index 0; `None` once it was taken back.
    topics: Vec<Option<MqttStr>>,
    /// Aliases taken back to make room, given out again first.
    free: Vec<u16>,
    /// The alias taken back next when the table is full (in turn, oldest first).
    evict_next: u16,
    bytes: usize,
}

/// What a PUBLISH to the connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alias {
    /// The topic has this alias already: the alias alone goes.
    Known(u16),
    /// The topic and this alias go, and the alias means the topic from then on (`set`).
    New(u16),
    /// The topic alone.
    None,
}

impl OutAliases {
    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }

    /// Bytes the table holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The alias for `topic` with at most `alias_max` aliases (nothing changes until `set`).
    pub fn choose(&self, topic: &MqttStr, alias_max: usize) -> Alias {
        if let Some(&alias) = self.by_topic.get(topic) {
            return Alias::Known(alias);
        }
        let cost = topic.len() + ENTRY_BYTES;
        if alias_max == 0 || cost > OUT_ALIAS_BYTES_MAX {
            return Alias::None;
        }
        if let Some(&alias) = self.free.last() {
            return Alias::New(alias);
        }
        if self.topics.len() < alias_max && self.bytes + cost <= OUT_ALIAS_BYTES_MAX {
            return Alias::New(self.topics.len() as u16 + 1);
        }
        Alias::New(self.next_victim(0))
    }

    /// Makes `alias` (from `choose`) mean `topic`, taking back other aliases, oldest first,
    /// until the table is within its bytes again.
    pub fn set(&mut self, topic: &MqttStr, alias: u16) {
        let cost = topic.len() + ENTRY_BYTES;
        if let Some(at) = self.free.iter().position(|&a| a == alias) {
            self.free.swap_remove(at);
        }
        let index = usize::from(alias) - 1;
        if index == self.topics.len() {
            self.topics.push(None);
        }
        if self.topics[index].is_some() {
            // Taken from the oldest: the next to go is the one after it.
            self.take_back(alias);
            self.evict_next = alias;
        }
        while self.bytes + cost > OUT_ALIAS_BYTES_MAX {
            let victim = self.next_victim(alias);
            if victim == alias {
                break;
            }
            self.take_back(victim);
            self.free.push(victim);
            self.evict_next = victim;
        }
        // A copy: the message's topic shares its publisher's whole packet.
        let topic = topic.detached();
        self.bytes += cost;
        self.by_topic.insert(topic.clone(), alias);
        self.topics[index] = Some(topic);
    }

    /// The alias after the last one taken back that has a topic, other than `not`; `not`
    /// itself if no other has.
    fn next_victim(&self, not: u16) -> u16 {
        let n = self.topics.len();
        for step in 1..=n {
            let alias = (usize::from(self.evict_next) + step - 1) % n + 1;
            let alias = alias as u16;
            if alias != not && self.topics[usize::from(alias) - 1].is_some() {
                return alias;
            }
        }
        not
    }

    fn take_back(&mut self, alias: u16) {
        if let Some(old) = self.topics[usize::from(alias) - 1].take() {
            self.by_topic.remove(&old);
            self.bytes -= old.len() + ENTRY_BYTES;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, len: usize) -> MqttStr {
        MqttStr::new(&format!("{name}/{}", "x".repeat(len))).unwrap()
    }

    /// Sends `t` through the table as a connection would, and resolves it as the client
    /// would: what the client reads must be `t`.
    fn send(table: &mut OutAliases, client: &mut HashMap<u16, MqttStr>, t: &MqttStr, max: usize) {
        match table.choose(t, max) {
            Alias::Known(a) => assert_eq!(client.get(&a), Some(t), "alias {a}"),
            Alias::New(a) => {
                assert!(usize::from(a) <= max && a > 0, "alias {a} beyond {max}");
                table.set(t, a);
                client.insert(a, t.clone());
            }
            Alias::None => {}
        }
        assert!(table.bytes() <= OUT_ALIAS_BYTES_MAX);
        assert_eq!(table.by_topic.len(), table.topics.iter().flatten().count());
    }

    #[test]
    fn the_table_stays_in_its_bytes_and_the_client_always_reads_the_right_topic() {
        for max in [1, 3, 50, 65_535] {
            let mut table = OutAliases::default();
            let mut client = HashMap::new();
            for round in 0..3 {
                for i in 0..200 {
                    let len = [10, 2_000, 30_000, 65_500][(i + round) % 4];
                    send(&mut table, &mut client, &topic(&i.to_string(), len), max);
                }
            }
            assert!(table.topics.len() <= max);
        }
    }

    #[test]
    fn short_topics_within_the_maximum_keep_their_aliases() {
        let mut table = OutAliases::default();
        let mut client = HashMap::new();
        for round in 0..2 {
            for i in 0..10 {
                let t = topic(&i.to_string(), 5);
                let before = table.choose(&t, 10);
                if round == 1 {
                    assert_eq!(before, Alias::Known(i as u16 + 1));
                }
                send(&mut table, &mut client, &t, 10);
            }
        }
    }
}
