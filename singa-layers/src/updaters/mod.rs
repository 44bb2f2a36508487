//! Updaters: how a gradient changes a parameter.

mod adaptive;
mod sgd;

pub use adaptive::{AdaGrad, Adam, AdamW, RmsProp};
pub use sgd::{Nesterov, Sgd};
