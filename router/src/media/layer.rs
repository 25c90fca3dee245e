//! Simulcast layers and sets of them.
//!
//! A [`Layer`] is the position of a rid in the publisher's offer (Chrome
//! lists the lowest first; 0 without simulcast). It is not a rank: which
//! layer is lower is decided by the measured resolution or rate
//! ([`super::select::rank`]). A [`LayerMask`] is a set of layers, one bit
//! each; layers past 31 share the last bit (publishers offer at most a few).
//!
//! Inside the worker cores every layer is one of these. The interface to
//! the control plane and the cascade (`WorkerEvent`, `Command`,
//! `MediaPacket`, the cascade's wire format) still carries the raw `u8`
//! and `u32`; they are converted where they cross.

use std::fmt;
use std::ops::{BitAnd, BitOr, BitOrAssign};

/// Most simulcast layers a track may have: what an offer may list (more
/// is refused) and what a cascade link accepts from a peer.
pub const MAX_LAYERS: usize = 8;

/// One simulcast layer of a published track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Layer(u8);

impl Layer {
    /// The only layer of a track without simulcast.
    pub const BASE: Layer = Layer(0);

    /// The layer at position `i` of the publisher's offer.
    pub const fn new(i: u8) -> Self {
        Layer(i)
    }

    /// Its position in the publisher's offer.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// Its position as an index into per-layer tables.
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The layers `0..n` of a track that offers `n`.
    pub fn all(n: usize) -> impl Iterator<Item = Layer> {
        (0..n.min(usize::from(u8::MAX))).map(|i| Layer(i as u8))
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

/// A set of layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct LayerMask(u32);

impl LayerMask {
    /// No layer.
    pub const NONE: LayerMask = LayerMask(0);
    /// Every layer there may be.
    pub const ALL: LayerMask = LayerMask(u32::MAX);

    fn bit(l: Layer) -> u32 {
        1u32 << l.0.min(31)
    }

    /// The set of one layer.
    pub fn of(l: Layer) -> Self {
        LayerMask(Self::bit(l))
    }

    /// The set of one layer, if any.
    pub fn of_opt(l: Option<Layer>) -> Self {
        l.map_or(Self::NONE, Self::of)
    }

    /// The layers of a track offering `n` (without simulcast `n` is 0 or 1:
    /// its one layer).
    pub fn first(n: usize) -> Self {
        match n {
            0 | 1 => LayerMask(1),
            n if n >= 32 => Self::ALL,
            n => LayerMask((1u32 << n) - 1),
        }
    }

    /// From the bits of the control plane's and the cascade's interface.
    pub const fn from_bits(bits: u32) -> Self {
        LayerMask(bits)
    }

    /// The bits, for the control plane's and the cascade's interface.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether `l` is in the set.
    pub fn contains(self, l: Layer) -> bool {
        self.0 & Self::bit(l) != 0
    }

    /// Adds `l`.
    pub fn insert(&mut self, l: Layer) {
        self.0 |= Self::bit(l);
    }

    /// Removes `l`.
    pub fn remove(&mut self, l: Layer) {
        self.0 &= !Self::bit(l);
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The layers in the set, lowest position first.
    pub fn iter(self) -> impl Iterator<Item = Layer> {
        (0..32u8).filter(move |i| self.0 & (1 << i) != 0).map(Layer)
    }
}

impl BitOr for LayerMask {
    type Output = LayerMask;
    fn bitor(self, rhs: LayerMask) -> LayerMask {
        LayerMask(self.0 | rhs.0)
    }
}

impl BitOrAssign for LayerMask {
    fn bitor_assign(&mut self, rhs: LayerMask) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for LayerMask {
    type Output = LayerMask;
    fn bitand(self, rhs: LayerMask) -> LayerMask {
        LayerMask(self.0 & rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_hold_layers() {
        let mut m = LayerMask::NONE;
        assert!(m.is_empty());
        m.insert(Layer::new(2));
        m |= LayerMask::of(Layer::BASE);
        assert!(m.contains(Layer::new(2)) && m.contains(Layer::BASE));
        assert!(!m.contains(Layer::new(1)));
        assert_eq!(m.iter().collect::<Vec<_>>(), [Layer::BASE, Layer::new(2)]);
        m.remove(Layer::new(2));
        assert_eq!(m, LayerMask::of(Layer::BASE));
        assert_eq!(LayerMask::first(3).bits(), 0b111);
        assert_eq!(LayerMask::first(0), LayerMask::of(Layer::BASE));
        assert_eq!(LayerMask::first(40), LayerMask::ALL);
        // Past 31 layers share the last bit.
        assert!(LayerMask::of(Layer::new(40)).contains(Layer::new(31)));
    }
}
