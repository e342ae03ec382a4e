//! Typed ids and the tables they index: a key id cannot index the units, and an id exists
//! only once its table holds the item (tables only grow), so indexing never misses.

use std::marker::PhantomData;
use std::ops::{Index, IndexMut};

/// An index into a [`Table`] of one kind of item.
pub(crate) trait Id: Copy {
    /// The id of the `i`-th item; only [`Table::push`] makes ids.
    fn from_index(i: usize) -> Self;
    /// The position in the table.
    fn index(self) -> usize;
}

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) struct $name(usize);

        impl Id for $name {
            fn from_index(i: usize) -> Self {
                Self(i)
            }
            fn index(self) -> usize {
                self.0
            }
        }
    )*};
}

ids! {
    /// A checkpoint key of the plan.
    KeyId;
    /// A conversion unit of the plan.
    UnitId;
    /// A converter the plan knows (the registry's or a scope's).
    ConverterId;
    /// A renaming the plan knows (the registry's or a scope's).
    RenamingId;
    /// A replacement scope the plan learnt.
    ScopeId;
}

/// Items indexed by their id, in the order they were added.
#[derive(Debug)]
pub(crate) struct Table<I, T> {
    items: Vec<T>,
    id: PhantomData<fn() -> I>,
}

impl<I: Id, T> Table<I, T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            items: Vec::new(),
            id: PhantomData,
        }
    }

    /// Adds `item`, returning its id.
    pub fn push(&mut self, item: T) -> I {
        self.items.push(item);
        I::from_index(self.items.len() - 1)
    }

    /// Every item with its id, in order.
    pub fn iter(&self) -> impl Iterator<Item = (I, &T)> {
        self.items
            .iter()
            .enumerate()
            .map(|(i, t)| (I::from_index(i), t))
    }

    /// Every item, in order.
    pub fn values(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    /// The number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }
}

impl<I: Id, T> Index<I> for Table<I, T> {
    type Output = T;
    fn index(&self, id: I) -> &T {
        &self.items[id.index()]
    }
}

impl<I: Id, T> IndexMut<I> for Table<I, T> {
    fn index_mut(&mut self, id: I) -> &mut T {
        &mut self.items[id.index()]
    }
}
