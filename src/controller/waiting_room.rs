//! Objects the KMS budget turned away, waiting for room without holding a reconcile slot.
//!
//! When the budget is full (see `crate::kms::fair`), a reconcile that needs KMS is deferred
//! instead of waiting in its slot. It waits here, and is brought back when a request leaves
//! the budget, round-robin between namespaces, so the objects of one namespace cannot crowd out
//! another's, and nothing polls while KMS is busy.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

type Key = (String, String);

#[derive(Default)]
struct Room {
    queues: HashMap<String, VecDeque<String>>,
    turns: VecDeque<String>,
    members: HashSet<Key>,
}

#[derive(Default)]
pub struct WaitingRoom {
    room: Mutex<Room>,
}

impl WaitingRoom {
    pub fn new() -> Self {
        WaitingRoom::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Room> {
        crate::sync::lock(&self.room)
    }

    /// Adds an object (once; a second deferral keeps its place).
    pub fn defer(&self, namespace: &str, name: &str) {
        let mut room = self.lock();
        if !room.members.insert((namespace.to_owned(), name.to_owned())) {
            return;
        }
        let queue = room.queues.entry(namespace.to_owned()).or_default();
        let first = queue.is_empty();
        queue.push_back(name.to_owned());
        if first {
            room.turns.push_back(namespace.to_owned());
        }
    }

    /// The next object to bring back: the oldest of the namespace whose turn it is.
    pub fn next(&self) -> Option<(String, String)> {
        let mut room = self.lock();
        let namespace = room.turns.pop_front()?;
        let queue = room.queues.get_mut(&namespace)?;
        let name = queue.pop_front()?;
        if queue.is_empty() {
            room.queues.remove(&namespace);
        } else {
            room.turns.push_back(namespace.clone());
        }
        let key = (namespace, name);
        room.members.remove(&key);
        Some(key)
    }

    /// The oldest object of the first namespace, in turn order, for which `wanted(namespace)`
    /// holds; the namespaces passed over keep their turn.
    pub fn next_where(&self, wanted: impl Fn(&str) -> bool) -> Option<(String, String)> {
        let mut room = self.lock();
        let at = room.turns.iter().position(|ns| wanted(ns))?;
        let namespace = room.turns.remove(at)?;
        let queue = room.queues.get_mut(&namespace)?;
        let name = queue.pop_front()?;
        if queue.is_empty() {
            room.queues.remove(&namespace);
        } else {
            room.turns.push_back(namespace.clone());
        }
        let key = (namespace, name);
        room.members.remove(&key);
        Some(key)
    }

    /// Forgets objects for which `exists(namespace, name)` is false.
    pub fn retain(&self, exists: impl Fn(&str, &str) -> bool) {
        let mut room = self.lock();
        let Room {
            queues,
            turns,
            members,
        } = &mut *room;
        members.retain(|(ns, name)| exists(ns, name));
        for (ns, queue) in queues.iter_mut() {
            queue.retain(|name| exists(ns, name));
        }
        queues.retain(|_, q| !q.is_empty());
        turns.retain(|ns| queues.contains_key(ns));
    }

    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_come_back_round_robin_between_namespaces() {
        let room = WaitingRoom::new();
        for i in 0..3 {
            room.defer("noisy", &format!("n{i}"));
        }
        room.defer("quiet", "q");
        room.defer("noisy", "n0");
        assert_eq!(room.len(), 4, "deferred twice, waits once");
        let order: Vec<_> = std::iter::from_fn(|| room.next()).collect();
        let names: Vec<&str> = order.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(names, ["n0", "q", "n1", "n2"]);
        assert!(room.is_empty());
    }

    #[test]
    fn namespaces_passed_over_keep_their_turn() {
        let room = WaitingRoom::new();
        room.defer("busy", "b0");
        room.defer("busy", "b1");
        room.defer("quiet", "q0");
        room.defer("other", "o0");
        assert_eq!(
            room.next_where(|ns| ns != "busy"),
            Some(("quiet".into(), "q0".into()))
        );
        assert_eq!(room.next_where(|ns| ns == "nobody"), None);
        assert_eq!(room.next(), Some(("busy".into(), "b0".into())));
        assert_eq!(room.next(), Some(("other".into(), "o0".into())));
        assert_eq!(room.next(), Some(("busy".into(), "b1".into())));
        assert!(room.is_empty());
    }

    #[test]
    fn deleted_objects_are_forgotten() {
        let room = WaitingRoom::new();
        room.defer("a", "x");
        room.defer("b", "y");
        room.retain(|ns, _| ns == "b");
        assert_eq!(room.next(), Some(("b".into(), "y".into())));
        assert_eq!(room.next(), None);
    }
}
