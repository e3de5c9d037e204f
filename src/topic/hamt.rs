//! A persistent hash array mapped trie (Bagwell's HAMT with compressed nodes), for the trie's
//! maps too large to copy whole on every change (`devices/{id}` with a million children, a
//! filter with ten thousand subscribers).
//!
//! A branch holds only the slots in use, found by a 32-bit bitmap and a popcount, so an entry
//! costs its own size plus a slot tag and its share of small branches (about 20 bytes for a
//! pointer-sized entry), where `imbl`'s fixed 32-slot chunks cost ~160. Clone is O(1) (the
//! root is shared); a change copies the O(log32 n) branches on its path that are still shared,
//! and changes branches it already owns in place.

use smallvec::SmallVec;
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, LazyLock};

/// An entry that carries its own key (a child node knows its level, a member its session).
pub trait Keyed: Clone {
    type Key: Hash + Eq + ?Sized;
    fn key(&self) -> &Self::Key;
}

impl<K: Hash + Eq + Clone, V: Clone> Keyed for (K, V) {
    type Key = K;
    fn key(&self) -> &K {
        &self.0
    }
}

/// One seed per process: names come from clients, so a fixed hash would let them collide.
static HASHER: LazyLock<hashbrown::DefaultHashBuilder> = LazyLock::new(Default::default);

fn hash<Q: Hash + ?Sized>(key: &Q) -> u64 {
    HASHER.hash_one(key)
}

const BITS: u32 = 5;
/// Below this shift the hash is used up: a branch there is a plain list of full collisions.
const HASH_BITS: u32 = u64::BITS;

#[derive(Clone, Debug)]
enum Slot<E> {
    Entry(E),
    Branch(Branch<E>),
}

/// The slots of one level, in one allocation with their reference count.
#[derive(Clone, Debug)]
struct Branch<E> {
    /// Which of the 32 positions hold a slot (unused in a collision list).
    bitmap: u32,
    /// The slots in position order, exactly as many as the bitmap's ones.
    slots: Arc<[Slot<E>]>,
}

impl<E: Clone> Branch<E> {
    fn empty() -> Self {
        Branch {
            bitmap: 0,
            slots: Arc::new([]),
        }
    }

    /// A copy with `slot` inserted at `at` (slices do not grow in place; a change copies
    /// the level anyway when a snapshot shares it).
    fn inserting(&self, at: usize, slot: Slot<E>) -> Arc<[Slot<E>]> {
        let (before, after) = self.slots.split_at(at);
        let mut slots = Vec::with_capacity(self.slots.len() + 1);
        slots.extend_from_slice(before);
        slots.push(slot);
        slots.extend_from_slice(after);
        slots.into()
    }

    fn removing(&self, at: usize) -> Arc<[Slot<E>]> {
        let (before, after) = self.slots.split_at(at);
        [before, &after[1..]].concat().into()
    }
}

/// Where `hash` goes in a branch at `shift`: its bit, and its index among the slots.
fn position(bitmap: u32, hash: u64, shift: u32) -> (u32, usize) {
    let bit = 1u32 << ((hash >> shift) & 31);
    (bit, (bitmap & (bit - 1)).count_ones() as usize)
}

#[derive(Clone, Debug)]
pub struct Hamt<E> {
    root: Branch<E>,
    len: usize,
}

impl<E: Clone> Default for Hamt<E> {
    fn default() -> Self {
        Hamt {
            root: Branch::empty(),
            len: 0,
        }
    }
}

impl<E: Keyed> Hamt<E> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&E>
    where
        E::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = hash(key);
        let mut branch = &self.root;
        let mut shift = 0;
        loop {
            if shift >= HASH_BITS {
                return branch.slots.iter().find_map(|slot| match slot {
                    Slot::Entry(e) if e.key().borrow() == key => Some(e),
                    _ => None,
                });
            }
            let (bit, at) = position(branch.bitmap, hash, shift);
            if branch.bitmap & bit == 0 {
                return None;
            }
            match &branch.slots[at] {
                Slot::Entry(e) => return (e.key().borrow() == key).then_some(e),
                Slot::Branch(child) => branch = child,
            }
            shift += BITS;
        }
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut E>
    where
        E::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // Look first, so that a missing key copies no branch.
        self.get(key)?;
        get_mut(&mut self.root, key, hash(key), 0)
    }

    /// Inserts `entry`, or replaces the entry with its key and returns that.
    pub fn insert(&mut self, entry: E) -> Option<E> {
        let hash = hash(entry.key());
        let old = insert(&mut self.root, entry, hash, 0);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<E>
    where
        E::Key: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key)?;
        let old = remove(&mut self.root, key, hash(key), 0);
        debug_assert!(old.is_some(), "found just before");
        self.len -= 1;
        old
    }

    /// Calls `f` on every entry, in `iter`'s order; faster than `iter` (a tight loop per
    /// level, no stack to keep), for the matching path that visits every subscriber.
    pub fn for_each<'a>(&'a self, f: &mut impl FnMut(&'a E)) {
        fn visit<'a, E>(slots: &'a [Slot<E>], f: &mut impl FnMut(&'a E)) {
            for slot in slots {
                match slot {
                    Slot::Entry(e) => f(e),
                    Slot::Branch(child) => visit(&child.slots, f),
                }
            }
        }
        visit(&self.root.slots, f)
    }

    pub fn iter(&self) -> Iter<'_, E> {
        let mut stack = SmallVec::new();
        stack.push(self.root.slots.iter());
        Iter { stack }
    }
}

fn get_mut<'a, E: Keyed, Q>(
    branch: &'a mut Branch<E>,
    key: &Q,
    hash: u64,
    shift: u32,
) -> Option<&'a mut E>
where
    E::Key: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    let slots = Arc::make_mut(&mut branch.slots);
    if shift >= HASH_BITS {
        return slots.iter_mut().find_map(|slot| match slot {
            Slot::Entry(e) if e.key().borrow() == key => Some(e),
            _ => None,
        });
    }
    let (bit, at) = position(branch.bitmap, hash, shift);
    if branch.bitmap & bit == 0 {
        return None;
    }
    match &mut slots[at] {
        Slot::Entry(e) => (e.key().borrow() == key).then_some(e),
        Slot::Branch(child) => get_mut(child, key, hash, shift + BITS),
    }
}

fn insert<E: Keyed>(branch: &mut Branch<E>, entry: E, hash: u64, shift: u32) -> Option<E> {
    if shift >= HASH_BITS {
        let slots = Arc::make_mut(&mut branch.slots);
        for slot in slots.iter_mut() {
            if let Slot::Entry(e) = slot {
                if e.key() == entry.key() {
                    return Some(std::mem::replace(e, entry));
                }
            }
        }
        branch.slots = branch.inserting(branch.slots.len(), Slot::Entry(entry));
        return None;
    }
    let (bit, at) = position(branch.bitmap, hash, shift);
    if branch.bitmap & bit == 0 {
        branch.slots = branch.inserting(at, Slot::Entry(entry));
        branch.bitmap |= bit;
        return None;
    }
    let slot = &mut Arc::make_mut(&mut branch.slots)[at];
    match slot {
        Slot::Branch(child) => return insert(child, entry, hash, shift + BITS),
        Slot::Entry(e) if e.key() == entry.key() => return Some(std::mem::replace(e, entry)),
        Slot::Entry(_) => {}
    }
    // Two keys share this position: they move one level down, into a branch of their own.
    let Slot::Entry(existing) = std::mem::replace(slot, Slot::Branch(Branch::empty())) else {
        unreachable!("matched as an entry just above")
    };
    let Slot::Branch(child) = slot else {
        unreachable!("just put there")
    };
    let existing_hash = self::hash(existing.key());
    insert(child, existing, existing_hash, shift + BITS);
    insert(child, entry, hash, shift + BITS);
    None
}

fn remove<E: Keyed, Q>(branch: &mut Branch<E>, key: &Q, hash: u64, shift: u32) -> Option<E>
where
    E::Key: Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    let at = if shift >= HASH_BITS {
        (branch.slots.iter())
            .position(|slot| matches!(slot, Slot::Entry(e) if e.key().borrow() == key))?
    } else {
        let (bit, at) = position(branch.bitmap, hash, shift);
        if branch.bitmap & bit == 0 {
            return None;
        }
        match &branch.slots[at] {
            Slot::Entry(e) if e.key().borrow() == key => {}
            Slot::Entry(_) => return None,
            Slot::Branch(_) => {
                let slot = &mut Arc::make_mut(&mut branch.slots)[at];
                let Slot::Branch(child) = slot else {
                    unreachable!("matched as a branch just above")
                };
                let removed = remove(child, key, hash, shift + BITS)?;
                // A branch left with a single entry gives it back to this one, so that
                // removals leave the trie as compact as inserting the survivors would have.
                if let [Slot::Entry(only)] = &*child.slots {
                    *slot = Slot::Entry(only.clone());
                }
                return Some(removed);
            }
        }
        branch.bitmap &= !bit;
        at
    };
    let Slot::Entry(removed) = branch.slots[at].clone() else {
        unreachable!("found as an entry above")
    };
    branch.slots = branch.removing(at);
    Some(removed)
}

/// Entries in hash order (stable for a given map, not insertion order).
pub struct Iter<'a, E> {
    /// The slots left to visit on each level down to the current one; the trie is at most
    /// 14 levels deep, and 8 covers a billion well-spread keys without spilling.
    stack: SmallVec<[std::slice::Iter<'a, Slot<E>>; 8]>,
}

impl<'a, E> Iterator for Iter<'a, E> {
    type Item = &'a E;

    fn next(&mut self) -> Option<&'a E> {
        loop {
            match self.stack.last_mut()?.next() {
                None => {
                    self.stack.pop();
                }
                Some(Slot::Entry(e)) => return Some(e),
                Some(Slot::Branch(child)) => self.stack.push(child.slots.iter()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A key whose hash is chosen by the test, to force deep branches and full collisions.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Colliding(u16);

    impl Hash for Colliding {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            // Only 4 distinct hashes: most keys share theirs entirely.
            (self.0 % 4).hash(state)
        }
    }

    fn check_against_model<K: Hash + Eq + Clone + std::fmt::Debug>(
        ops: &[(bool, K, u32)],
    ) -> Result<(), TestCaseError> {
        let mut map: Hamt<(K, u32)> = Hamt::default();
        let mut model = HashMap::new();
        let mut snapshots = Vec::new();
        for (insert, key, value) in ops {
            if *insert {
                prop_assert_eq!(
                    map.insert((key.clone(), *value)).map(|e| e.1),
                    model.insert(key.clone(), *value)
                );
            } else {
                prop_assert_eq!(map.remove(key).map(|e| e.1), model.remove(key));
            }
            snapshots.push((map.clone(), model.clone()));
            prop_assert_eq!(map.len(), model.len());
        }
        // Every snapshot still holds exactly what it held when taken.
        for (map, model) in snapshots {
            let mut seen: Vec<_> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
            prop_assert_eq!(seen.len(), model.len());
            seen.retain(|(k, v)| model.get(k) == Some(v));
            prop_assert_eq!(seen.len(), model.len());
            for (k, v) in &model {
                prop_assert_eq!(map.get(k).map(|e| e.1), Some(*v));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn behaves_as_a_hash_map(ops in proptest::collection::vec((any::<bool>(), 0u16..2000, any::<u32>()), 0..600)) {
            check_against_model(&ops)?;
        }

        #[test]
        fn full_hash_collisions(ops in proptest::collection::vec((any::<bool>(), (0u16..64).prop_map(Colliding), any::<u32>()), 0..200)) {
            check_against_model(&ops)?;
        }
    }

    #[test]
    fn removals_leave_it_compact_and_get_mut_copies_only_its_path() {
        let mut map: Hamt<(u32, u32)> = Hamt::default();
        for i in 0..10_000 {
            map.insert((i, i));
        }
        let snapshot = map.clone();
        *map.get_mut(&7).unwrap() = (7, 70);
        assert_eq!(snapshot.get(&7), Some(&(7, 7)));
        assert_eq!(map.get(&7), Some(&(7, 70)));
        assert_eq!(map.get_mut(&10_001), None);
        for i in 1..10_000 {
            map.remove(&i);
        }
        // One entry left: it sits in the root, with no branch below.
        assert_eq!(map.len(), 1);
        assert!(matches!(&*map.root.slots, [Slot::Entry((0, 0))]));
        assert_eq!(snapshot.len(), 10_000);
        assert_eq!(snapshot.iter().count(), 10_000);
    }
}
