//! The children of a level of the retained store, by name and in order. Most levels have
//! one child (`a/b/c` is a chain), so a level holds a sorted vector sized to what it holds
//! while it has few: one child costs one entry, where a B-tree allocates room for eleven
//! (a topic of 200 empty levels held 130 KB that way; a client could make a few megabytes of
//! PUBLISHes hold gigabytes). Past `FEW_MAX` children it is a B-tree, so that a level with a
//! million children still inserts in O(log n).

use std::collections::btree_map::{self, BTreeMap};
use std::ops::Bound::{Excluded, Unbounded};

/// Children kept in a sorted vector at most; one more and they move to a B-tree.
const FEW_MAX: usize = 16;

/// Up to this many children, the vector grows one entry at a time (no spare room).
const EXACT_MAX: usize = 4;

pub(super) enum Levels<V> {
    Few(Vec<(Box<str>, V)>),
    Many(BTreeMap<Box<str>, V>),
}

impl<V> Default for Levels<V> {
    fn default() -> Self {
        Levels::Few(Vec::new())
    }
}

impl<V: Default> Levels<V> {
    pub(super) fn is_empty(&self) -> bool {
        match self {
            Levels::Few(few) => few.is_empty(),
            Levels::Many(many) => many.is_empty(),
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&V> {
        self.get_key_value(name).map(|(_, v)| v)
    }

    pub(super) fn get_key_value(&self, name: &str) -> Option<(&str, &V)> {
        match self {
            Levels::Few(few) => {
                let at = find(few, name).ok()?;
                Some((&few[at].0, &few[at].1))
            }
            Levels::Many(many) => many.get_key_value(name).map(|(k, v)| (&**k, v)),
        }
    }

    pub(super) fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        match self {
            Levels::Few(few) => {
                let at = find(few, name).ok()?;
                Some(&mut few[at].1)
            }
            Levels::Many(many) => many.get_mut(name),
        }
    }

    /// The child named `name`, made (empty) if there was none; true if it was made.
    pub(super) fn get_or_insert(&mut self, name: &str) -> (&mut V, bool) {
        if let Levels::Few(few) = self {
            if few.len() == FEW_MAX && find(few, name).is_err() {
                let many = std::mem::take(few).into_iter().collect();
                *self = Levels::Many(many);
            }
        }
        match self {
            Levels::Few(few) => match find(few, name) {
                Ok(at) => (&mut few[at].1, false),
                Err(at) => {
                    if few.len() == few.capacity() && few.len() < EXACT_MAX {
                        few.reserve_exact(1);
                    }
                    few.insert(at, (name.into(), V::default()));
                    (&mut few[at].1, true)
                }
            },
            Levels::Many(many) => match many.entry(name.into()) {
                btree_map::Entry::Occupied(o) => (o.into_mut(), false),
                btree_map::Entry::Vacant(v) => (v.insert(V::default()), true),
            },
        }
    }

    pub(super) fn remove(&mut self, name: &str) -> Option<V> {
        match self {
            Levels::Few(few) => {
                let at = find(few, name).ok()?;
                let (_, removed) = few.remove(at);
                if few.is_empty() {
                    *few = Vec::new();
                }
                Some(removed)
            }
            Levels::Many(many) => many.remove(name),
        }
    }

    /// The children in order of their names.
    pub(super) fn iter(&self) -> Iter<'_, V> {
        self.after(None)
    }

    /// The children whose names come after `name` (all of them for `None`), in order.
    pub(super) fn after(&self, name: Option<&str>) -> Iter<'_, V> {
        match self {
            Levels::Few(few) => {
                let from = name.map_or(0, |name| few.partition_point(|(k, _)| &**k <= name));
                Iter::Few(few[from..].iter())
            }
            Levels::Many(many) => {
                let from = name.map_or(Unbounded, Excluded);
                Iter::Many(many.range::<str, _>((from, Unbounded)))
            }
        }
    }
}

fn find<V>(few: &[(Box<str>, V)], name: &str) -> Result<usize, usize> {
    few.binary_search_by(|(k, _)| (**k).cmp(name))
}

pub(super) enum Iter<'a, V> {
    Few(std::slice::Iter<'a, (Box<str>, V)>),
    Many(btree_map::Range<'a, Box<str>, V>),
}

impl<'a, V> Iterator for Iter<'a, V> {
    type Item = (&'a str, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Few(few) => few.next().map(|(k, v)| (&**k, v)),
            Iter::Many(many) => many.next().map(|(k, v)| (&**k, v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names in the order `iter` and `after` give them, through the move to a B-tree and
    /// removals, compared with a B-tree's.
    #[test]
    fn behaves_as_an_ordered_map_through_growth_and_removal() {
        let mut levels: Levels<u32> = Levels::default();
        let mut model = BTreeMap::new();
        for i in (0..40u32).rev().chain([7, 3]) {
            let name = format!("n{:02}", (i * 7) % 40);
            let (value, made) = levels.get_or_insert(&name);
            assert_eq!(made, !model.contains_key(&name));
            *value = i;
            model.insert(name, i);
        }
        assert!(matches!(levels, Levels::Many(_)));
        for gone in ["n05", "n00", "absent"] {
            assert_eq!(levels.remove(gone), model.remove(gone));
        }
        let all: Vec<_> = levels.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let expected: Vec<_> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(all, expected);
        let later: Vec<_> = levels
            .after(Some("n30"))
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(
            later,
            ["n31", "n32", "n33", "n34", "n35", "n36", "n37", "n38", "n39"]
        );
        assert_eq!(levels.get("n12"), model.get("n12"));
    }

    #[test]
    fn few_children_are_a_sorted_vector_sized_to_them() {
        let mut levels: Levels<u8> = Levels::default();
        levels.get_or_insert("b");
        levels.get_or_insert("a");
        let Levels::Few(few) = &levels else {
            panic!("a vector for two children");
        };
        assert_eq!(few.capacity(), 2);
        let names: Vec<_> = levels
            .after(Some("a"))
            .map(|(k, _)| k.to_string())
            .collect();
        assert_eq!(names, ["b"]);
        assert_eq!(levels.get_key_value("a").map(|(k, _)| k), Some("a"));
        assert!(levels.get_mut("c").is_none());
        levels.remove("a");
        levels.remove("b");
        assert!(levels.is_empty());
    }
}
