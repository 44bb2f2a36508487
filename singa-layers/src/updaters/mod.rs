//! Updaters: how a gradient changes a parameter.

mod adaptive;
mod sgd;

pub use adaptive::{AdaDelta, AdaGrad, AdaMax, Adam, AdamW, RmsProp};
pub use sgd::{Nesterov, Sgd};
