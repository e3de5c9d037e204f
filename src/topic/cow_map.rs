//! A map whose clone is cheap, for the path-copying trie: a writer clones every node it
//! changes, so a node's maps must clone in time independent of their size.
//!
//! Up to `SMALL_MAX` entries live in a plain vector (a clone copies at most that many, and a
//! linear scan beats hashing); beyond that, in a persistent hash array mapped trie (`imbl`),
//! whose clone is O(1) and whose insert copies O(log n) of it. Most trie nodes have one or two
//! children; `devices/{id}` has a million, and must not be copied whole for each subscribe.

use std::borrow::Borrow;
use std::hash::Hash;

type Hamt<K, V> =
    imbl::GenericHashMap<K, V, hashbrown::DefaultHashBuilder, imbl::shared_ptr::DefaultSharedPtr>;

/// Entries kept in the vector form; one more moves the map to the HAMT.
const SMALL_MAX: usize = 8;
/// A HAMT shrunk to this many entries goes back to the vector (below `SMALL_MAX`, so that a
/// map at the boundary does not convert back and forth).
const SMALL_AGAIN: usize = 4;

#[derive(Clone, Debug)]
pub enum CowMap<K, V> {
    Small(Vec<(K, V)>),
    Large(Hamt<K, V>),
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        CowMap::Small(Vec::new())
    }
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    pub fn len(&self) -> usize {
        match self {
            CowMap::Small(v) => v.len(),
            CowMap::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            CowMap::Small(v) => v.iter().find(|(k, _)| k.borrow() == key).map(|(_, v)| v),
            CowMap::Large(m) => m.get(key),
        }
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            CowMap::Small(v) => v
                .iter_mut()
                .find(|(k, _)| k.borrow() == key)
                .map(|(_, v)| v),
            CowMap::Large(m) => m.get_mut(key),
        }
    }

    /// The value for `key`, inserting `make()` (under the key `make_key()`) if there is none.
    pub fn get_or_insert_with<Q>(
        &mut self,
        key: &Q,
        make_key: impl FnOnce() -> K,
        make: impl FnOnce() -> V,
    ) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.get(key).is_none() {
            self.insert(make_key(), make());
        }
        self.get_mut(key).expect("present: found or just inserted")
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self {
            CowMap::Small(v) => {
                if let Some((_, old)) = v.iter_mut().find(|(k, _)| *k == key) {
                    return Some(std::mem::replace(old, value));
                }
                if v.len() < SMALL_MAX {
                    // Grown one entry at a time (at most SMALL_MAX moves): most maps hold one
                    // or two, and a vector's usual first growth would make room for four.
                    v.reserve_exact(1);
                    v.push((key, value));
                    return None;
                }
                let mut large: Hamt<K, V> = v.drain(..).collect();
                large.insert(key, value);
                *self = CowMap::Large(large);
                None
            }
            CowMap::Large(m) => m.insert(key, value),
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            CowMap::Small(v) => {
                let at = v.iter().position(|(k, _)| k.borrow() == key)?;
                let (_, old) = v.swap_remove(at);
                if v.is_empty() {
                    // Give the allocation back: empty maps are the common case in the trie.
                    *v = Vec::new();
                }
                Some(old)
            }
            CowMap::Large(m) => {
                let old = m.remove(key)?;
                if m.len() <= SMALL_AGAIN {
                    let small = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    *self = CowMap::Small(small);
                }
                Some(old)
            }
        }
    }

    pub fn iter(&self) -> Iter<'_, K, V> {
        match self {
            CowMap::Small(v) => Iter::Small(v.iter()),
            CowMap::Large(m) => Iter::Large(m.iter()),
        }
    }
}

pub enum Iter<'a, K, V> {
    Small(std::slice::Iter<'a, (K, V)>),
    Large(imbl::hashmap::Iter<'a, K, V, imbl::shared_ptr::DefaultSharedPtr>),
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Small(it) => it.next().map(|(k, v)| (k, v)),
            Iter::Large(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_hamt_and_shrinks_back() {
        let mut map = CowMap::default();
        for i in 0..100u32 {
            assert_eq!(map.insert(i, i * 2), None);
        }
        assert!(matches!(map, CowMap::Large(_)));
        assert_eq!(map.len(), 100);
        assert_eq!(map.insert(7, 0), Some(14));
        let copy = map.clone();
        for i in 0..97u32 {
            assert!(map.remove(&i).is_some());
        }
        assert!(matches!(map, CowMap::Small(_)));
        let mut left: Vec<_> = map.iter().map(|(k, v)| (*k, *v)).collect();
        left.sort();
        assert_eq!(left, vec![(97, 194), (98, 196), (99, 198)]);
        // The clone taken before is untouched by the removals.
        assert_eq!(copy.len(), 100);
        assert_eq!(copy.get(&7), Some(&0));
    }
}
