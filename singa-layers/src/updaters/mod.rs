//! Updaters: how a gradient changes a parameter.

mod sgd;

pub use sgd::Sgd;
