//! The numbers the kernels take for singa's enums and shapes.

use singa_core::{AdaptiveRule, PoolShape, UnaryOp};

/// The kernels' code and two parameters of a unary function.
pub(crate) fn unary_code(op: UnaryOp) -> (i32, f32, f32) {
    match op {
        UnaryOp::Identity => (0, 0.0, 0.0),
        UnaryOp::Relu => (1, 0.0, 0.0),
        UnaryOp::LeakyRelu { slope } => (2, slope, 0.0),
        UnaryOp::Sigmoid => (3, 0.0, 0.0),
        UnaryOp::Tanh => (4, 0.0, 0.0),
        UnaryOp::ScaledTanh => (5, 0.0, 0.0),
        UnaryOp::Exp => (6, 0.0, 0.0),
        UnaryOp::Log => (7, 0.0, 0.0),
        UnaryOp::Sqrt => (8, 0.0, 0.0),
        UnaryOp::Square => (9, 0.0, 0.0),
        UnaryOp::Abs => (10, 0.0, 0.0),
        UnaryOp::Sign => (11, 0.0, 0.0),
        UnaryOp::Neg => (12, 0.0, 0.0),
        UnaryOp::Clamp { min, max } => (13, min, max),
    }
}

/// The kernel's code and five constants of an adaptive rule, and whether decay is decoupled.
pub(crate) fn adaptive_code(rule: AdaptiveRule) -> (i32, [f32; 5], i32) {
    match rule {
        AdaptiveRule::AdaGrad { eps } => (0, [eps, 0.0, 0.0, 0.0, 0.0], 0),
        AdaptiveRule::RmsProp { rho, eps } => (1, [rho, eps, 0.0, 0.0, 0.0], 0),
        AdaptiveRule::Adam {
            beta1,
            beta2,
            eps,
            correction1,
            correction2,
            decoupled,
        } => (
            2,
            [beta1, beta2, eps, correction1, correction2],
            decoupled as i32,
        ),
        AdaptiveRule::AdaDelta { rho, eps } => (3, [rho, eps, 0.0, 0.0, 0.0], 0),
        AdaptiveRule::AdaMax {
            beta1,
            beta2,
            eps,
            correction1,
        } => (4, [beta1, beta2, eps, correction1, 0.0], 0),
    }
}

/// A pooling shape as the kernels take it.
pub(crate) struct PoolGeometry {
    pub planes: i64,
    pub height: i64,
    pub width: i64,
    pub kh: i64,
    pub kw: i64,
    pub sh: i64,
    pub sw: i64,
    pub ph: i64,
    pub pw: i64,
    pub out_h: i64,
    pub out_w: i64,
}

impl PoolGeometry {
    pub(crate) fn of(s: &PoolShape) -> PoolGeometry {
        PoolGeometry {
            planes: (s.batch * s.channels) as i64,
            height: s.height as i64,
            width: s.width as i64,
            kh: s.kernel_h as i64,
            kw: s.kernel_w as i64,
            sh: s.stride_h as i64,
            sw: s.stride_w as i64,
            ph: s.pad_h as i64,
            pw: s.pad_w as i64,
            out_h: s.out_h() as i64,
            out_w: s.out_w() as i64,
        }
    }
}
