//! A map kept out of line and made on first insert: most sessions never hold an entry
//! (an idle client, a QoS 0 subscriber), and each would otherwise pay for an empty map's
//! space. Once made it stays, so a busy session does not allocate it again and again.

use hashbrown::HashMap;
use std::hash::Hash;

#[derive(Debug)]
pub struct LazyMap<K, V>(Option<Box<HashMap<K, V>>>);

impl<K, V> Default for LazyMap<K, V> {
    fn default() -> Self {
        LazyMap(None)
    }
}

impl<K: Hash + Eq, V> LazyMap<K, V> {
    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.0.as_ref().is_some_and(|m| m.contains_key(key))
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.0.as_ref()?.get(key)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.0.as_mut()?.get_mut(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.0
            .get_or_insert_with(Default::default)
            .insert(key, value)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.0.as_mut()?.remove(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().flat_map(|m| m.values())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().flat_map(|m| m.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map_and_allocates_only_when_used() {
        let mut map: LazyMap<u16, &str> = LazyMap::default();
        assert!(map.0.is_none());
        assert_eq!(map.len(), 0);
        assert_eq!(map.remove(&1), None);
        assert!(map.get_mut(&1).is_none());
        assert!(map.0.is_none(), "reads and removes do not allocate");
        assert_eq!(map.insert(1, "a"), None);
        assert_eq!(map.insert(1, "b"), Some("a"));
        map.insert(2, "c");
        assert!(map.contains_key(&2));
        assert_eq!(map.get(&1), Some(&"b"));
        assert_eq!(map.values().count(), 2);
        assert_eq!(map.iter().count(), 2);
        assert_eq!(map.remove(&1), Some("b"));
        assert_eq!(map.len(), 1);
    }
}
