//! Tensor shapes.

use crate::error::{Error, Result};
use abi_stable::StableAbi;
use std::fmt;

/// The largest rank a [`Shape`] can have (batch, time, channels, height, width and one spare).
pub const MAX_DIMS: usize = 6;

/// The dimensions of a tensor, row-major, outermost first.
///
/// A fixed-capacity value type: copying one never allocates, so shapes can be built and
/// compared freely in the training loop.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: [usize; MAX_DIMS],
    rank: usize,
}

impl Shape {
    /// The shape of a scalar (rank 0, one element).
    pub const fn scalar() -> Shape {
        Shape {
            dims: [0; MAX_DIMS],
            rank: 0,
        }
    }

    /// Builds a shape from its dimensions; fails for more than [`MAX_DIMS`] dimensions.
    pub fn new(dims: &[usize]) -> Result<Shape> {
        if dims.len() > MAX_DIMS {
            return Err(Error::invalid(format!(
                "a shape has at most {MAX_DIMS} dimensions, got {} ({dims:?})",
                dims.len()
            )));
        }
        let mut s = Shape::scalar();
        s.dims[..dims.len()].copy_from_slice(dims);
        s.rank = dims.len();
        Ok(s)
    }

    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank]
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Dimension `i` (panics if `i >= rank`, like slice indexing).
    pub fn dim(&self, i: usize) -> usize {
        self.dims()[i]
    }

    /// The number of elements (1 for a scalar). A product that overflows `usize` saturates at
    /// `usize::MAX`, which no allocation can satisfy, so such shapes fail cleanly.
    pub fn numel(&self) -> usize {
        self.dims()
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// The shape seen as a matrix: the first dimension by the product of the others.
    ///
    /// This is how layers that treat the batch dimension specially (inner product, softmax)
    /// view their inputs. A scalar is `(1, 1)`, a vector of length n is `(n, 1)`.
    pub fn as_matrix(&self) -> (usize, usize) {
        match self.rank {
            0 => (1, 1),
            _ => (self.dims[0], self.dims()[1..].iter().product()),
        }
    }

    /// The same shape with dimension 0 replaced by `n`.
    pub fn with_dim0(&self, n: usize) -> Shape {
        let mut s = *self;
        if s.rank > 0 {
            s.dims[0] = n;
        }
        s
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(dims: [usize; N]) -> Shape {
        const { assert!(N <= MAX_DIMS, "a shape has at most MAX_DIMS dimensions") };
        let mut s = Shape::scalar();
        s.dims[..N].copy_from_slice(&dims);
        s.rank = N;
        s
    }
}

impl TryFrom<&[usize]> for Shape {
    type Error = Error;
    fn try_from(dims: &[usize]) -> Result<Shape> {
        Shape::new(dims)
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.dims().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        let s = Shape::from([64, 1, 28, 28]);
        assert_eq!(s.rank(), 4);
        assert_eq!(s.numel(), 64 * 784);
        assert_eq!(s.as_matrix(), (64, 784));
        assert_eq!(s.with_dim0(10).dims(), &[10, 1, 28, 28]);
        assert_eq!(s.to_string(), "[64, 1, 28, 28]");
        assert_eq!(Shape::scalar().numel(), 1);
        assert_eq!(Shape::new(&[3, 4]).unwrap(), Shape::from([3, 4]));
    }

    #[test]
    fn too_many_dims_is_an_error() {
        assert!(Shape::new(&[1; MAX_DIMS + 1]).is_err());
    }

    #[test]
    fn equality_ignores_unused_slots() {
        let a = Shape::from([2, 3]);
        let b = Shape::new(&[2, 3]).unwrap();
        assert_eq!(a, b);
    }
}
