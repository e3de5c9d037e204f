//! A set of keyed entries whose clone is cheap, for the path-copying trie: a writer clones
//! every node it changes, so a node's maps must clone in time independent of their size.
//!
//! One entry sits inline (most trie nodes have one child, most filters one subscriber); up
//! to `FEW_MAX` live in an exact-size boxed slice (a clone copies at most that many, a linear
//! scan beats hashing, and they stay in the order they came); beyond that, in a persistent
//! hash trie (`hamt`) whose clone is O(1) and whose change copies O(log n) of it.

use std::borrow::Borrow;
use std::hash::Hash;

use super::hamt::{self, Hamt, Keyed};

/// Entries kept in the slice form; one more moves the set to the hash trie.
const FEW_MAX: usize = 8;
/// A hash trie shrunk to this many entries goes back to the slice (below `FEW_MAX`, so that
/// a set at the boundary does not convert back and forth).
const FEW_AGAIN: usize = 4;

#[derive(Clone, Debug)]
pub enum CowSet<E> {
    One(E),
    /// None to `FEW_MAX` entries, in the order they were inserted.
    Few(Box<[E]>),
    /// Boxed: a node's sets are mostly small, and should not pay for this one's size.
    Many(Box<Hamt<E>>),
}

/// A map as a set of `(key, value)` entries.
pub type CowMap<K, V> = CowSet<(K, V)>;

impl<E> Default for CowSet<E> {
    fn default() -> Self {
        CowSet::Few(Box::default())
    }
}

impl<E: Keyed> CowSet<E> {
    pub fn len(&self) -> usize {
        match self {
            CowSet::One(_) => 1,
            CowSet::Few(few) => few.len(),
            CowSet::Many(many) => many.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&E>
    where
        E::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            CowSet::One(e) => (e.key().borrow() == key).then_some(e),
            CowSet::Few(few) => few.iter().find(|e| e.key().borrow() == key),
            CowSet::Many(many) => many.get(key),
        }
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut E>
    where
        E::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            CowSet::One(e) => (e.key().borrow() == key).then_some(e),
            CowSet::Few(few) => few.iter_mut().find(|e| e.key().borrow() == key),
            CowSet::Many(many) => many.get_mut(key),
        }
    }

    /// The entry for `key`, inserting `make()` (which must have that key) if there is none.
    pub fn get_or_insert_with<Q>(&mut self, key: &Q, make: impl FnOnce() -> E) -> &mut E
    where
        E::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if self.get(key).is_none() {
            self.insert(make());
        }
        self.get_mut(key).expect("present: found or just inserted")
    }

    /// Inserts `entry`, or replaces the entry with its key and returns that.
    pub fn insert(&mut self, entry: E) -> Option<E> {
        if let Some(old) = self.get_mut(entry.key()) {
            return Some(std::mem::replace(old, entry));
        }
        match self {
            CowSet::One(_) => {
                let CowSet::One(one) = std::mem::take(self) else {
                    unreachable!("matched just above")
                };
                *self = CowSet::Few(Box::new([one, entry]));
            }
            CowSet::Few(few) if few.is_empty() => *self = CowSet::One(entry),
            CowSet::Few(few) if few.len() < FEW_MAX => {
                let mut grown = std::mem::take(few).into_vec();
                grown.reserve_exact(1);
                grown.push(entry);
                *few = grown.into_boxed_slice();
            }
            CowSet::Few(few) => {
                let mut many = Hamt::default();
                for e in std::mem::take(few).into_vec() {
                    many.insert(e);
                }
                many.insert(entry);
                *self = CowSet::Many(Box::new(many));
            }
            CowSet::Many(many) => {
                many.insert(entry);
            }
        }
        None
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<E>
    where
        E::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self {
            CowSet::One(e) if e.key().borrow() == key => {
                let CowSet::One(old) = std::mem::take(self) else {
                    unreachable!("matched just above")
                };
                Some(old)
            }
            CowSet::One(_) => None,
            CowSet::Few(few) => {
                let at = few.iter().position(|e| e.key().borrow() == key)?;
                let mut left = std::mem::take(few).into_vec();
                let old = left.remove(at);
                *self = match <[E; 1]>::try_from(left) {
                    Ok([one]) => CowSet::One(one),
                    // Exact size again, or no allocation at all when empty.
                    Err(left) => CowSet::Few(left.into_boxed_slice()),
                };
                Some(old)
            }
            CowSet::Many(many) => {
                let old = many.remove(key)?;
                if many.len() <= FEW_AGAIN {
                    let few: Box<[E]> = many.iter().cloned().collect();
                    *self = CowSet::Few(few);
                }
                Some(old)
            }
        }
    }

    /// Calls `f` on every entry, in `iter`'s order (and faster, see `Hamt::for_each`).
    #[inline]
    pub fn for_each<'a>(&'a self, mut f: impl FnMut(&'a E)) {
        match self {
            CowSet::One(e) => f(e),
            CowSet::Few(few) => few.iter().for_each(f),
            CowSet::Many(many) => many.for_each(&mut f),
        }
    }

    pub fn iter(&self) -> Iter<'_, E> {
        match self {
            CowSet::One(e) => Iter::Few(std::slice::from_ref(e).iter()),
            CowSet::Few(few) => Iter::Few(few.iter()),
            CowSet::Many(many) => Iter::Many(many.iter()),
        }
    }
}

pub enum Iter<'a, E> {
    Few(std::slice::Iter<'a, E>),
    Many(hamt::Iter<'a, E>),
}

impl<'a, E> Iterator for Iter<'a, E> {
    type Item = &'a E;

    fn next(&mut self) -> Option<&'a E> {
        match self {
            Iter::Few(it) => it.next(),
            Iter::Many(it) => it.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_into_a_hash_trie_and_shrinks_back() {
        let mut map = CowMap::default();
        assert_eq!(map.insert((0u32, 0)), None);
        assert!(matches!(map, CowSet::One(_)));
        for i in 1..100u32 {
            assert_eq!(map.insert((i, i * 2)), None);
        }
        assert!(matches!(map, CowSet::Many(_)));
        assert_eq!(map.len(), 100);
        assert_eq!(map.insert((7, 0)), Some((7, 14)));
        let copy = map.clone();
        for i in 0..97u32 {
            assert!(map.remove(&i).is_some());
        }
        assert!(matches!(map, CowSet::Few(_)));
        let mut left: Vec<_> = map.iter().copied().collect();
        left.sort();
        assert_eq!(left, vec![(97, 194), (98, 196), (99, 198)]);
        assert_eq!(map.remove(&97), Some((97, 194)));
        assert_eq!(map.remove(&98), Some((98, 196)));
        assert!(matches!(map, CowSet::One((99, 198))));
        assert_eq!(map.remove(&99), Some((99, 198)));
        assert!(map.is_empty());
        // The clone taken before is untouched by the removals.
        assert_eq!(copy.len(), 100);
        assert_eq!(copy.get(&7), Some(&(7, 0)));
    }

    #[test]
    fn few_keep_their_order() {
        let mut map = CowMap::default();
        for i in [5u32, 3, 9, 1] {
            map.insert((i, ()));
        }
        map.remove(&3);
        map.insert((3, ()));
        let order: Vec<u32> = map.iter().map(|e| e.0).collect();
        assert_eq!(order, vec![5, 9, 1, 3]);
    }
}
