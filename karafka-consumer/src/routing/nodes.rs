//! [`Nodes`]: the swarm nodes a topic is consumed on (see [`crate::swarm`]).

use std::fmt;
use std::ops::{Range, RangeFrom, RangeInclusive};
use std::sync::Arc;

/// The swarm nodes a topic is consumed on (default: all). Node ids start at 0.
///
/// From a list (`[0, 2]`, a `Vec` or slice), a range (`0..2`, `0..=1`) or an open range
/// (`1..`: node 1 and every node after it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Nodes {
    /// Every node.
    #[default]
    All,
    /// These nodes.
    Only(Arc<[usize]>),
    /// This node and every one after it.
    From(usize),
}

impl Nodes {
    /// Whether node `node` consumes the topic.
    pub fn includes(&self, node: usize) -> bool {
        match self {
            Nodes::All => true,
            Nodes::Only(nodes) => nodes.contains(&node),
            Nodes::From(first) => node >= *first,
        }
    }

    /// The ids it names that a swarm of `count` nodes does not have (`0..count`), and
    /// whether it names none of them.
    pub fn unreachable(&self, count: usize) -> (Vec<usize>, bool) {
        match self {
            Nodes::All => (Vec::new(), count == 0),
            Nodes::Only(nodes) => {
                let out: Vec<usize> = nodes.iter().copied().filter(|n| *n >= count).collect();
                let none = out.len() == nodes.len();
                (out, none)
            }
            Nodes::From(first) => {
                if *first >= count {
                    (vec![*first], true)
                } else {
                    (Vec::new(), false)
                }
            }
        }
    }
}

impl fmt::Display for Nodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Nodes::All => f.write_str("all nodes"),
            Nodes::Only(nodes) => write!(f, "nodes {nodes:?}"),
            Nodes::From(first) => write!(f, "nodes {first}.."),
        }
    }
}

impl From<Range<usize>> for Nodes {
    fn from(r: Range<usize>) -> Self {
        Nodes::Only(r.collect())
    }
}

impl From<RangeInclusive<usize>> for Nodes {
    fn from(r: RangeInclusive<usize>) -> Self {
        Nodes::Only(r.collect())
    }
}

impl From<RangeFrom<usize>> for Nodes {
    fn from(r: RangeFrom<usize>) -> Self {
        Nodes::From(r.start)
    }
}

impl<const N: usize> From<[usize; N]> for Nodes {
    fn from(nodes: [usize; N]) -> Self {
        Nodes::Only(nodes.into())
    }
}

impl From<Vec<usize>> for Nodes {
    fn from(nodes: Vec<usize>) -> Self {
        Nodes::Only(nodes.into())
    }
}

impl From<&[usize]> for Nodes {
    fn from(nodes: &[usize]) -> Self {
        Nodes::Only(nodes.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_include_and_report_unreachable_ids() {
        assert!(Nodes::All.includes(7));
        let listed = Nodes::from([0, 2]);
        assert!(listed.includes(2) && !listed.includes(1));
        assert_eq!(listed.unreachable(2), (vec![2], false));
        assert_eq!(listed.unreachable(3), (vec![], false));
        assert_eq!(Nodes::from(3..5).unreachable(3), (vec![3, 4], true));
        let open = Nodes::from(1..);
        assert!(open.includes(1) && open.includes(9) && !open.includes(0));
        assert_eq!(open.unreachable(1), (vec![1], true));
        assert_eq!(Nodes::from(0..=1), Nodes::from(vec![0, 1]));
    }
}
