//! A scan of the retained messages a filter matches, a slice at a time (`RetainStore::scan`):
//! a walk of the store in order that stops once it has looked at enough levels or found
//! enough messages, and goes on later from where it stopped.

use std::ops::ControlFlow::{self, Break, Continue};

use super::{Found, RetainNode};

/// Where a scan of the retained messages stopped: the levels of the last topic it looked at.
/// The next slice goes on after it in the store's order, whatever changed in between: a
/// message set behind it is not sent by the scan (the subscription, live by then, gets it
/// as it is published), one removed ahead of it is not sent either. Plain data, so it moves
/// with its session to another shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanCursor(pub(super) Vec<Box<str>>);

/// One slice of a scan (`RetainStore::scan`): a walk of the store in order that stops once
/// it has looked at enough levels or found enough messages, remembering where.
pub(super) struct Walk<'s, 'o> {
    pub(super) found: Found<'o>,
    pub(super) visits_left: usize,
    pub(super) found_left: usize,
    /// The levels from the root to the node being looked at.
    pub(super) path: Vec<&'s str>,
    pub(super) stopped_at: Option<Vec<Box<str>>>,
}

impl<'s> Walk<'s, '_> {
    /// Looks at the node at `path` (its message, if the filter matches it): Break once the
    /// slice is used up, with that node as where the next goes on.
    fn visit(&mut self, node: &RetainNode, matches: bool) -> ControlFlow<()> {
        if matches && self.found.add(node) {
            self.found_left -= 1;
        }
        self.count_visit()
    }

    /// Passes over `name` under the root (a `$` topic a wildcard does not match): it costs
    /// a visit like any other, so that a million `$` topics cannot make one slice long.
    /// Not again when the cursor stopped there (`after` is `Some`).
    fn skip(&mut self, name: &'s str, after: Option<&[Box<str>]>) -> ControlFlow<()> {
        if after.is_some() {
            return Continue(());
        }
        self.path.push(name);
        let flow = self.count_visit();
        self.path.pop();
        flow
    }

    fn count_visit(&mut self) -> ControlFlow<()> {
        self.visits_left -= 1;
        if self.visits_left == 0 || self.found_left == 0 {
            self.stopped_at = Some(self.path.iter().map(|&level| level.into()).collect());
            return Break(());
        }
        Continue(())
    }

    /// The nodes under `node` that `levels` match (`node` itself too where the filter ends
    /// there, or with `#` past the root), in order. `after`: the rest of the cursor's path
    /// below `node`, whose nodes an earlier slice looked at.
    pub(super) fn walk(
        &mut self,
        node: &'s RetainNode,
        levels: &[&str],
        at_root: bool,
        after: Option<&[Box<str>]>,
    ) -> ControlFlow<()> {
        if after.is_none() && !at_root {
            let matches = levels.is_empty() || (levels == ["#"]);
            self.visit(node, matches)?;
        }
        let Some((&level, rest)) = levels.split_first() else {
            return Continue(());
        };
        // [MQTT-4.7.2-1] wildcards at the first level do not match '$' topics.
        let hidden = |name: &str| at_root && name.starts_with('$');
        match level {
            "#" => each_child(node, after, None, |name, child, after| {
                if hidden(name) {
                    return self.skip(name, after);
                }
                self.path.push(name);
                let flow = self.walk_all(child, after);
                self.path.pop();
                flow
            }),
            "+" => each_child(node, after, None, |name, child, after| {
                if hidden(name) {
                    return self.skip(name, after);
                }
                self.path.push(name);
                let flow = self.walk(child, rest, false, after);
                self.path.pop();
                flow
            }),
            name => each_child(node, after, Some(name), |name, child, after| {
                self.path.push(name);
                let flow = self.walk(child, rest, false, after);
                self.path.pop();
                flow
            }),
        }
    }

    /// `node` and everything under it (under a `#`), in order.
    fn walk_all(&mut self, node: &'s RetainNode, after: Option<&[Box<str>]>) -> ControlFlow<()> {
        if after.is_none() {
            self.visit(node, true)?;
        }
        each_child(node, after, None, |name, child, after| {
            self.path.push(name);
            let flow = self.walk_all(child, after);
            self.path.pop();
            flow
        })
    }
}

/// Calls `f` for the children of `node` (only the one named `only`, if given) still to walk
/// after the cursor path `after`: the child on that path again (with the rest of the path:
/// the nodes below it that come later), then those after it in order.
fn each_child<'s>(
    node: &'s RetainNode,
    after: Option<&[Box<str>]>,
    only: Option<&str>,
    mut f: impl FnMut(&'s str, &'s RetainNode, Option<&[Box<str>]>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let (on_path, below) = match after {
        Some([first, below @ ..]) => (Some(&**first), below),
        _ => (None, &[][..]),
    };
    if let Some(first) = on_path.filter(|&first| only.is_none_or(|name| name == first)) {
        if let Some((name, child)) = node.children.get_key_value(first) {
            f(name, child, Some(below))?;
        }
    }
    match only {
        Some(name) => {
            if on_path.is_none_or(|first| name > first) {
                if let Some((name, child)) = node.children.get_key_value(name) {
                    f(name, child, None)?;
                }
            }
        }
        None => {
            for (name, child) in node.children.after(on_path) {
                f(name, child, None)?;
            }
        }
    }
    Continue(())
}
