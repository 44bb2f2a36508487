//! Recurrent cells: one time step of a GRU (SINGA's `GRULayer`) or of an LSTM.
//!
//! A cell maps the step's input `x` (`[batch, features]`) and the previous hidden state `h`
//! (`[batch, hidden_dim]`; zeros when the layer has no second source) to the next hidden
//! state. Unrolled over time, the copies of a cell share their parameters.

use singa_core::abi::{ROption, RResult, RSlice, RSliceMut, RVec};
use singa_core::{
    BinaryOp, DType, DeviceRef, Dims3, Error, FieldKind, FieldSpec, Fields, Init, Layer, LayerDef,
    Param, ParamFactoryMut, ParamSpec, Phase, ReduceOp, Result, SetupContext, Tensor, TensorSpec,
    UnaryOp,
};

/// One step of a gated recurrent unit (Cho et al. 2014, SINGA's and cuDNN's form):
///
/// ```text
/// z  = σ(x·W_xz + h·W_hz + b_z)          update gate
/// r  = σ(x·W_xr + h·W_hr + b_r)          reset gate
/// c  = tanh(x·W_xc + (r ⊙ h)·W_hc + b_c)  candidate
/// h' = z ⊙ h + (1 − z) ⊙ c
/// ```
///
/// Sources: the input, and optionally the previous hidden state (else zeros). The input
/// weights are one parameter, the gates side by side (`weight_x` `[features, 3·hidden]`,
/// gates z, r, c), so one product serves the three gates; with `projected_input` the input
/// already is `x·W_x` (the unrolling projects a whole sequence at once) and the cell has no
/// input weights.
pub struct Gru {
    hidden: usize,
    bias_term: bool,
    projected: bool,
    /// Whether `backward` adds to the parameters' gradients (see
    /// [`crate::capability::AccumulateGradients`]).
    accumulate: bool,
    state: Option<GruState>,
}

/// The parameters of one gate that every step multiplies anew: the hidden weights and the
/// bias.
struct Gate {
    wh: Param,
    b: Option<Param>,
}

/// The fields of a recurrent cell.
fn cell_fields() -> Vec<FieldSpec> {
    vec![
        FieldSpec::new("hidden_dim", FieldKind::Int, "units of the hidden state").required(),
        FieldSpec::new("bias_term", FieldKind::Bool, "learned gate biases").default(true),
        FieldSpec::new(
            "projected_input",
            FieldKind::Bool,
            "the input is already x·W_x ([batch, gates·hidden_dim]) and the cell has no input weights (set by the unrolling, which projects a whole sequence in one product)",
        )
        .default(false),
    ]
}

/// A cell's `(hidden_dim, bias_term, projected_input)`.
fn read_cell_fields(f: &Fields) -> Result<(usize, bool, bool)> {
    let hidden = f.usize("hidden_dim")?;
    if hidden == 0 {
        return Err(Error::invalid("hidden_dim must be at least 1"));
    }
    Ok((hidden, f.bool("bias_term")?, f.bool("projected_input")?))
}

/// Checks a cell's sources, the input and then none or all of its `states` (`[batch,
/// hidden]` each), and returns the input's `(batch, features)`. A projected input must have
/// `width` features.
fn cell_sources(
    ctx: &SetupContext<'_>,
    ty: &str,
    states: &[&str],
    hidden: usize,
    projected_width: Option<usize>,
) -> Result<(usize, usize)> {
    let context = || format!("layer {}", ctx.layer);
    let inputs = ctx.inputs.as_slice();
    if inputs.len() != 1 && inputs.len() != 1 + states.len() {
        let all: Vec<String> = states.iter().map(|s| format!("the previous {s}")).collect();
        return Err(Error::shape(
            context(),
            format!(
                "{ty} takes the input, or the input and {}; got {} sources",
                all.join(" and "),
                inputs.len()
            ),
        ));
    }
    let (batch, features) = inputs[0].shape.as_matrix();
    if let Some(width) = projected_width.filter(|&w| w != features) {
        return Err(Error::shape(
            context(),
            format!(
                "a projected input (projected_input = true) has {width} features, the gates' \
                 side by side; got shape {}",
                inputs[0].shape
            ),
        ));
    }
    for (what, spec) in states.iter().zip(&inputs[1..]) {
        if spec.shape.as_matrix() != (batch, hidden) {
            return Err(Error::shape(
                context(),
                format!(
                    "the previous {what} has shape {}; expected [{batch}, {hidden}]",
                    spec.shape
                ),
            ));
        }
    }
    Ok((batch, features))
}

/// char-rnn's initialisation of recurrent weights.
const CELL_INIT: Init = Init::Uniform {
    low: -0.08,
    high: 0.08,
};

/// The input weights of a cell with `gates` gates side by side (`weight_x` `[features,
/// gates·h]`), or none for a projected input.
fn input_weights(
    params: &mut ParamFactoryMut<'_>,
    projected: bool,
    (features, gates, h): (usize, usize, usize),
) -> Result<Option<Param>> {
    if projected {
        return Ok(None);
    }
    let spec = ParamSpec::new(
        "weight_x",
        [features, gates * h],
        features,
        gates * h,
        CELL_INIT,
    );
    params.param(spec).into_result().map(Some)
}

/// A gate's bias `bias_{g}` of `h` values starting at `value`.
fn gate_bias(params: &mut ParamFactoryMut<'_>, g: &str, h: usize, value: f32) -> Result<Param> {
    let spec = ParamSpec::new(&format!("bias_{g}"), [h], h, h, Init::Constant { value });
    params.param(spec).into_result()
}

/// Creates gate `g`'s hidden weights `weight_h{g}` (`[h, h]`) and its bias, when there is one.
fn make_gate(
    params: &mut ParamFactoryMut<'_>,
    g: &str,
    h: usize,
    bias: Option<f32>,
) -> Result<Gate> {
    let wh = ParamSpec::new(&format!("weight_h{g}"), [h, h], h, h, CELL_INIT);
    let wh = params.param(wh).into_result()?;
    let b = match bias {
        Some(value) => Some(gate_bias(params, g, h, value)?),
        None => None,
    };
    Ok(Gate { wh, b })
}

/// Adds `b` to every row of `t` (`[rows, b.len()]`).
fn add_bias(dev: &DeviceRef, b: &Param, rows: usize, t: &mut Tensor) -> Result<()> {
    let dims = Dims3 {
        outer: rows,
        mid: b.value.numel(),
        inner: 1,
    };
    dev.add_broadcast(dims, &b.value, t)
}

/// Sums the rows of `d` into `sums` (`beta · sums` added: 0 overwrites, 1 adds).
fn row_sums(dev: &DeviceRef, d: &Tensor, sums: &mut Tensor, beta: f32) -> Result<()> {
    let (rows, cols) = d.shape().as_matrix();
    let dims = Dims3 {
        outer: 1,
        mid: rows,
        inner: cols,
    };
    dev.reduce(ReduceOp::Sum, dims, d, sums, 1.0, beta)
}

/// What a parameter gradient's old values are multiplied by before a step's gradient is added:
/// 1 when the layer accumulates its gradients, 0 when it overwrites them.
fn grad_beta(accumulate: bool) -> f32 {
    if accumulate {
        1.0
    } else {
        0.0
    }
}

/// Gate `k` of the input's side-by-side projection `xw` (columns `k·h ..`) plus `h·W_h` and
/// the bias, into `pre`; then `act = f(pre)`.
fn gate(
    dev: &DeviceRef,
    g: &Gate,
    (xw, k, h): (&Tensor, usize, &Tensor),
    f: UnaryOp,
    (pre, act): (&mut Tensor, &mut Tensor),
    batch: usize,
) -> Result<()> {
    let hid = g.wh.value.shape().dim(0);
    dev.copy_columns(xw, k * hid, pre, 0, hid)?;
    dev.matmul(1.0, h, false, &g.wh.value, false, 1.0, pre)?;
    if let Some(b) = &g.b {
        add_bias(dev, b, batch, pre)?;
    }
    dev.unary(f, pre, act)
}

/// The gradients of a gate's hidden weights and bias from its pre-activation's gradient `d`
/// and the state `h` it multiplied, added to `beta` times the old ones.
fn gate_grads(dev: &DeviceRef, g: &mut Gate, h: &Tensor, d: &Tensor, beta: f32) -> Result<()> {
    dev.matmul(1.0, h, true, d, false, beta, &mut g.wh.grad)?;
    match &mut g.b {
        Some(b) => row_sums(dev, d, &mut b.grad, beta),
        None => Ok(()),
    }
}

/// Buffers of one batch, `[batch, hidden]` each, allocated at setup.
struct GruState {
    dev: DeviceRef,
    batch: usize,
    hidden: usize,
    /// `weight_x` `[features, 3·hidden]` (gates z, r, c), none for a projected input.
    wx: Option<Param>,
    z: Gate,
    r: Gate,
    c: Gate,
    /// `x·W_x` forward and the gates' gradients side by side backward (`[batch, 3·hidden]`).
    wide: Tensor,
    /// The previous hidden state when there is no second source.
    zeros: Option<Tensor>,
    /// Pre-activations and activations of the gates, `r ⊙ h`, and scratch.
    pre_z: Tensor,
    act_z: Tensor,
    pre_r: Tensor,
    act_r: Tensor,
    pre_c: Tensor,
    act_c: Tensor,
    rh: Tensor,
    tmp: Tensor,
    /// Gradients of the pre-activations and of `r ⊙ h`.
    d_z: Tensor,
    d_r: Tensor,
    d_c: Tensor,
    d_rh: Tensor,
}

impl LayerDef for Gru {
    const TYPE: &'static str = "gru";
    const DOC: &'static str = "One step of a gated recurrent unit: sources the input [batch, features] and optionally the previous hidden state [batch, hidden_dim] (else zeros); output the next hidden state. Params weight_x [features, 3·hidden_dim] (gates z, r, c side by side; none with projected_input), weight_h{z,r,c} [hidden_dim, hidden_dim] (uniform on ±0.08) and bias_{z,r,c} (zeros).";

    fn fields() -> Vec<FieldSpec> {
        cell_fields()
    }

    fn new(f: &Fields) -> Result<Self> {
        let (hidden, bias_term, projected) = read_cell_fields(f)?;
        Ok(Gru {
            hidden,
            bias_term,
            projected,
            accumulate: false,
            state: None,
        })
    }
}

impl Gru {
    fn setup_impl(
        &mut self,
        ctx: &SetupContext<'_>,
        mut params: ParamFactoryMut<'_>,
    ) -> Result<RVec<TensorSpec>> {
        let h = self.hidden;
        let inputs = ctx.inputs.as_slice();
        let width = self.projected.then_some(3 * h);
        let (batch, features) = cell_sources(ctx, Self::TYPE, &["hidden state"], h, width)?;
        let wx = input_weights(&mut params, self.projected, (features, 3, h))?;
        let bias = self.bias_term.then_some(0.0);
        let mut gate = |g: &str| make_gate(&mut params, g, h, bias);
        let (z, r, c) = (gate("z")?, gate("r")?, gate("c")?);
        let dev = ctx.device.clone();
        let buf = || Tensor::zeros(&dev, [batch, h], DType::F32);
        self.state = Some(GruState {
            wide: Tensor::zeros(&dev, [batch, 3 * h], DType::F32)?,
            zeros: if inputs.len() == 1 {
                Some(buf()?)
            } else {
                None
            },
            pre_z: buf()?,
            act_z: buf()?,
            pre_r: buf()?,
            act_r: buf()?,
            pre_c: buf()?,
            act_c: buf()?,
            rh: buf()?,
            tmp: buf()?,
            d_z: buf()?,
            d_r: buf()?,
            d_c: buf()?,
            d_rh: buf()?,
            dev,
            batch,
            hidden: h,
            wx,
            z,
            r,
            c,
        });
        Ok(vec![TensorSpec::new("output", [batch, h], DType::F32)].into())
    }

    fn state(&mut self) -> Result<&mut GruState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("gru used before setup"))
    }
}

impl Layer for Gru {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        self.setup_impl(ctx, params).into()
    }

    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.state()?;
            let dev = s.dev.clone();
            let x = &inputs[0];
            let h = inputs
                .get(1)
                .or(s.zeros.as_ref())
                .expect("set up with zeros");
            let b = s.batch;
            let xw = match &s.wx {
                Some(wx) => {
                    dev.matmul(1.0, x, false, &wx.value, false, 0.0, &mut s.wide)?;
                    &s.wide
                }
                None => x,
            };
            let sigmoid = UnaryOp::Sigmoid;
            gate(
                &dev,
                &s.z,
                (xw, 0, h),
                sigmoid,
                (&mut s.pre_z, &mut s.act_z),
                b,
            )?;
            gate(
                &dev,
                &s.r,
                (xw, 1, h),
                sigmoid,
                (&mut s.pre_r, &mut s.act_r),
                b,
            )?;
            dev.binary(BinaryOp::Mul, &s.act_r, h, &mut s.rh)?;
            let (pre, act) = (&mut s.pre_c, &mut s.act_c);
            gate(&dev, &s.c, (xw, 2, &s.rh), UnaryOp::Tanh, (pre, act), b)?;
            // h' = c + z ⊙ (h − c)
            let y = &mut outputs[0];
            dev.binary(BinaryOp::Sub, h, &s.act_c, &mut s.tmp)?;
            dev.binary(BinaryOp::Mul, &s.act_z, &s.tmp, y)?;
            dev.axpby(1.0, &s.act_c, 1.0, y)
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            let beta = grad_beta(self.accumulate);
            let s = self.state()?;
            let dev = s.dev.clone();
            let (x, dy) = (&inputs[0], &grad_outputs[0]);
            let h = inputs
                .get(1)
                .or(s.zeros.as_ref())
                .expect("set up with zeros");
            // Through h' = z ⊙ h + (1 − z) ⊙ c: dz = dy ⊙ (h − c), dc = dy − dy ⊙ z.
            dev.binary(BinaryOp::Sub, h, &s.act_c, &mut s.tmp)?;
            dev.binary(BinaryOp::Mul, dy, &s.tmp, &mut s.d_z)?;
            dev.binary(BinaryOp::Mul, dy, &s.act_z, &mut s.tmp)?;
            dev.binary(BinaryOp::Sub, dy, &s.tmp, &mut s.d_c)?;
            let d_c = s.d_c.clone();
            dev.unary_backward(UnaryOp::Tanh, &s.pre_c, &s.act_c, &d_c, &mut s.d_c)?;
            let d_z = s.d_z.clone();
            dev.unary_backward(UnaryOp::Sigmoid, &s.pre_z, &s.act_z, &d_z, &mut s.d_z)?;
            // Through the candidate: d(r ⊙ h) = d_c · W_hcᵀ, dr = d(r ⊙ h) ⊙ h.
            dev.matmul(1.0, &s.d_c, false, &s.c.wh.value, true, 0.0, &mut s.d_rh)?;
            dev.binary(BinaryOp::Mul, &s.d_rh, h, &mut s.d_r)?;
            let d_r = s.d_r.clone();
            dev.unary_backward(UnaryOp::Sigmoid, &s.pre_r, &s.act_r, &d_r, &mut s.d_r)?;
            gate_grads(&dev, &mut s.z, h, &s.d_z, beta)?;
            gate_grads(&dev, &mut s.r, h, &s.d_r, beta)?;
            gate_grads(&dev, &mut s.c, &s.rh, &s.d_c, beta)?;
            // The gates' gradients side by side: the projected input's gradient, or what
            // W_x's gradient and the input's come from.
            let hid = s.hidden;
            let wide = match (&s.wx, &mut grad_inputs[0]) {
                (None, ROption::RSome(dx)) => Some(dx),
                (None, ROption::RNone) => None,
                (Some(_), _) => Some(&mut s.wide),
            };
            if let Some(wide) = wide {
                for (k, d) in [&s.d_z, &s.d_r, &s.d_c].into_iter().enumerate() {
                    dev.copy_columns(d, 0, wide, k * hid, hid)?;
                }
            }
            if let Some(wx) = &mut s.wx {
                dev.matmul(1.0, x, true, &s.wide, false, beta, &mut wx.grad)?;
                if let ROption::RSome(dx) = &mut grad_inputs[0] {
                    dev.matmul(1.0, &s.wide, false, &wx.value, true, 0.0, dx)?;
                }
            }
            if let Some(ROption::RSome(dh)) = grad_inputs.get_mut(1) {
                // dh = dy ⊙ z + d(r ⊙ h) ⊙ r + d_z · W_hzᵀ + d_r · W_hrᵀ
                dev.binary(BinaryOp::Mul, dy, &s.act_z, dh)?;
                dev.binary(BinaryOp::Mul, &s.d_rh, &s.act_r, &mut s.tmp)?;
                dev.axpby(1.0, &s.tmp, 1.0, dh)?;
                dev.matmul(1.0, &s.d_z, false, &s.z.wh.value, true, 1.0, dh)?;
                dev.matmul(1.0, &s.d_r, false, &s.r.wh.value, true, 1.0, dh)?;
            }
            Ok(())
        })()
        .into()
    }
}

/// One step of a long short-term memory cell (Hochreiter & Schmidhuber 1997, with a forget
/// gate; PyTorch's and char-rnn's form):
///
/// ```text
/// i = σ(x·W_xi + h·W_hi + b_i)    f = σ(x·W_xf + h·W_hf + b_f)
/// o = σ(x·W_xo + h·W_ho + b_o)    g = tanh(x·W_xg + h·W_hg + b_g)
/// c' = f ⊙ c + i ⊙ g              h' = o ⊙ tanh(c')
/// ```
///
/// Sources: the input, and optionally the previous hidden state and cell (both, else zeros).
/// Outputs: `output` (h') and `cell` (c'). The forget gate's bias starts at 1, as char-rnn's.
/// With `projected_input` the input already is `x·W_x` (`[batch, 4·hidden]`) and the cell has
/// no input weights.
pub struct Lstm {
    hidden: usize,
    bias_term: bool,
    projected: bool,
    /// Whether `backward` adds to the parameters' gradients (see
    /// [`crate::capability::AccumulateGradients`]).
    accumulate: bool,
    state: Option<LstmState>,
}

/// Buffers of one batch, allocated at setup.
///
/// The products compute all four gates at once: `x·W_x` and `h·W_h` with the gates side by
/// side (`[batch, 4·hidden]`, gate k in columns `k·hidden ..`), one product each; one fused
/// device operation then does everything elementwise ([`DeviceRef::lstm_cell`]), and one its
/// gradient, so that a step is two products and one pass over the gates each way.
struct LstmState {
    dev: DeviceRef,
    /// `weight_x` `[features, 4·hidden]` (none for a projected input) and `weight_h`
    /// `[hidden, 4·hidden]`, gates i, f, o, g.
    wx: Option<Param>,
    wh: Param,
    /// The gates' biases (apart, so that the forget gate's can start at 1), and the four side
    /// by side as the fused operation takes them.
    bias: Option<([Param; 4], WideBias)>,
    /// The gates side by side: pre-activations, then (in place) activations, kept for the
    /// backward pass.
    gates: Tensor,
    /// The gates' pre-activation gradients, side by side (written into a projected input's
    /// gradient instead, when there is one).
    d_gates: Tensor,
    /// The previous hidden state and cell when they are not sources.
    zeros: Option<Tensor>,
    /// tanh(c'), for the backward pass.
    tanh_c: Tensor,
}

/// A `[4·hidden]` buffer and a view of each gate's part: the biases' values, copied in before
/// every forward pass, and their gradients, summed over the batch in the backward pass before
/// they are copied out.
struct WideBias {
    all: Tensor,
    part: [Tensor; 4],
}

impl WideBias {
    fn new(dev: &DeviceRef, hidden: usize) -> Result<WideBias> {
        let all = Tensor::zeros(dev, [4 * hidden], DType::F32)?;
        let part = |k: usize| all.narrow(k * hidden, hidden);
        Ok(WideBias {
            part: [part(0)?, part(1)?, part(2)?, part(3)?],
            all,
        })
    }
}

/// The gates of an LSTM, in the order of the weights' column blocks.
const LSTM_GATES: [&str; 4] = ["i", "f", "o", "g"];

impl LayerDef for Lstm {
    const TYPE: &'static str = "lstm";
    const DOC: &'static str = "One step of an LSTM cell: sources the input [batch, features] and optionally the previous hidden state and cell ([batch, hidden_dim] each, else zeros); outputs `output` (the next hidden state) and `cell`. Params weight_x [features, 4·hidden_dim] (none with projected_input) and weight_h [hidden_dim, 4·hidden_dim] (gates i, f, o, g side by side; uniform on ±0.08), and bias_{i,f,o,g} (zeros, the forget gate's 1).";

    fn fields() -> Vec<FieldSpec> {
        cell_fields()
    }

    fn new(f: &Fields) -> Result<Self> {
        let (hidden, bias_term, projected) = read_cell_fields(f)?;
        Ok(Lstm {
            hidden,
            bias_term,
            projected,
            accumulate: false,
            state: None,
        })
    }
}

impl Lstm {
    fn setup_impl(
        &mut self,
        ctx: &SetupContext<'_>,
        mut params: ParamFactoryMut<'_>,
    ) -> Result<RVec<TensorSpec>> {
        let h = self.hidden;
        let inputs = ctx.inputs.as_slice();
        let states = ["hidden state", "cell"];
        let width = self.projected.then_some(4 * h);
        let (batch, features) = cell_sources(ctx, Self::TYPE, &states, h, width)?;
        let wx = input_weights(&mut params, self.projected, (features, 4, h))?;
        let spec = ParamSpec::new("weight_h", [h, 4 * h], h, 4 * h, CELL_INIT);
        let wh = params.param(spec).into_result()?;
        let dev = ctx.device.clone();
        let bias = if self.bias_term {
            let mut made = Vec::new();
            for g in LSTM_GATES {
                let value = if g == "f" { 1.0 } else { 0.0 };
                made.push(gate_bias(&mut params, g, h, value)?);
            }
            let made = made.try_into().map_err(|_| Error::invalid("four biases"))?;
            Some((made, WideBias::new(&dev, h)?))
        } else {
            None
        };
        let buf = || Tensor::zeros(&dev, [batch, h], DType::F32);
        self.state = Some(LstmState {
            wx,
            wh,
            bias,
            gates: Tensor::zeros(&dev, [batch, 4 * h], DType::F32)?,
            d_gates: Tensor::zeros(&dev, [batch, 4 * h], DType::F32)?,
            zeros: if inputs.len() == 1 {
                Some(buf()?)
            } else {
                None
            },
            tanh_c: buf()?,
            dev,
        });
        Ok(vec![
            TensorSpec::new("output", [batch, h], DType::F32),
            TensorSpec::new("cell", [batch, h], DType::F32),
        ]
        .into())
    }

    fn state(&mut self) -> Result<&mut LstmState> {
        self.state
            .as_mut()
            .ok_or_else(|| Error::invalid("lstm used before setup"))
    }
}

impl LstmState {
    /// The gates' pre-activations for input `x` and previous state `h`, into `gates`.
    fn products(&mut self, x: &Tensor, h: &Tensor) -> Result<()> {
        let dev = &self.dev;
        match &self.wx {
            Some(wx) => dev.matmul(1.0, x, false, &wx.value, false, 0.0, &mut self.gates)?,
            None => dev.copy(x, &mut self.gates)?,
        }
        dev.matmul(1.0, h, false, &self.wh.value, false, 1.0, &mut self.gates)
    }

    /// The biases side by side, as the fused cell takes them (refreshed at every step: the
    /// updater may have changed them).
    fn wide_bias(&mut self) -> Result<Option<&Tensor>> {
        let Some((params, wide)) = &mut self.bias else {
            return Ok(None);
        };
        for (b, part) in params.iter().zip(&mut wide.part) {
            self.dev.copy(&b.value, part)?;
        }
        Ok(Some(&wide.all))
    }

    /// The parameters' gradients from the gates' gradients `d_gates` and the step's inputs,
    /// added to `beta` times the old ones.
    fn param_grads(&mut self, d_gates: &Tensor, x: &Tensor, h: &Tensor, beta: f32) -> Result<()> {
        let dev = &self.dev;
        if let Some((params, wide)) = &mut self.bias {
            row_sums(dev, d_gates, &mut wide.all, 0.0)?;
            for (b, part) in params.iter_mut().zip(&wide.part) {
                dev.axpby(1.0, part, beta, &mut b.grad)?;
            }
        }
        if let Some(wx) = &mut self.wx {
            dev.matmul(1.0, x, true, d_gates, false, beta, &mut wx.grad)?;
        }
        dev.matmul(1.0, h, true, d_gates, false, beta, &mut self.wh.grad)
    }
}

impl Layer for Lstm {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        params: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        self.setup_impl(ctx, params).into()
    }

    fn forward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            let s = self.state()?;
            let x = &inputs[0];
            let zeros = s.zeros.clone();
            let h = inputs.get(1).or(zeros.as_ref()).expect("set up with zeros");
            let c = inputs.get(2).or(zeros.as_ref()).expect("set up with zeros");
            let [h_out, c_out] = outputs.as_mut_slice() else {
                return Err(Error::invalid("lstm has two outputs"));
            };
            s.products(x, h)?;
            let dev = s.dev.clone();
            let bias = s.wide_bias()?.cloned();
            dev.lstm_cell(&mut s.gates, bias.as_ref(), c, c_out, &mut s.tanh_c, h_out)
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        inputs: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        grad_outputs: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            let beta = grad_beta(self.accumulate);
            let s = self.state()?;
            let dev = s.dev.clone();
            let x = &inputs[0];
            let zeros = s.zeros.clone();
            let h = inputs.get(1).or(zeros.as_ref()).expect("set up with zeros");
            let c = inputs.get(2).or(zeros.as_ref()).expect("set up with zeros");
            let (dh, dc) = (&grad_outputs[0], &grad_outputs[1]);
            // A projected input's gradient is the gates' gradient: written there directly.
            let d_gates = match (&s.wx, &grad_inputs[0]) {
                (None, ROption::RSome(dx)) => dx.reshape(s.d_gates.shape())?,
                _ => s.d_gates.clone(),
            };
            let dc_prev = match grad_inputs.get_mut(2) {
                Some(ROption::RSome(t)) => Some(t),
                _ => None,
            };
            let mut out = d_gates.clone();
            dev.lstm_cell_backward(&s.gates, c, &s.tanh_c, dh, dc, &mut out, dc_prev)?;
            s.param_grads(&d_gates, x, h, beta)?;
            if let (Some(wx), ROption::RSome(dx)) = (&s.wx, &mut grad_inputs[0]) {
                dev.matmul(1.0, &d_gates, false, &wx.value, true, 0.0, dx)?;
            }
            if let Some(ROption::RSome(dh_prev)) = grad_inputs.get_mut(1) {
                dev.matmul(1.0, &d_gates, false, &s.wh.value, true, 0.0, dh_prev)?;
            }
            Ok(())
        })()
        .into()
    }
}

/// The state an unrolled cell carries from one batch to the next (SINGA's "full state", as
/// char-rnn trains): outputs `[batch, hidden_dim]` values (and a cell's, for an LSTM) that the
/// first step of the cell reads as the previous state. They start at zero; after each batch
/// the net copies the cell's last step into them (`from`), so every stream of a `text_data`
/// layer continues with the state it ended with. The source only sets the batch size; no
/// gradient flows into the batch before (truncated BPTT). The values are the layer's state,
/// kept in checkpoints, so a resumed run continues exactly.
pub struct RecurrentState {
    hidden: usize,
    cell: bool,
    dev: Option<DeviceRef>,
    /// The output tensors, held from the first forward pass on (for checkpoints).
    held: Vec<Tensor>,
    /// Values restored before the outputs were known, written at the next forward pass.
    pending: Option<Vec<f32>>,
    /// The number of values of the outputs (known from setup on).
    values: usize,
}

impl LayerDef for RecurrentState {
    const TYPE: &'static str = "recurrent_state";
    const DOC: &'static str = "The hidden state (and cell) an unrolled recurrent cell carries between batches: [batch, hidden_dim] outputs, zero at first, replaced by the cell's last step (`from`) after every batch. Added by the unrolling for `algorithm = \"bptt\"`.";

    fn fields() -> Vec<FieldSpec> {
        vec![
            FieldSpec::new("hidden_dim", FieldKind::Int, "units of the state").required(),
            FieldSpec::new("cell", FieldKind::Bool, "an LSTM's cell as a second output")
                .default(false),
            FieldSpec::new(
                "from",
                FieldKind::Str,
                "the layer whose outputs it takes after each batch",
            )
            .required(),
        ]
    }

    fn new(f: &Fields) -> Result<Self> {
        let hidden = f.usize("hidden_dim")?;
        if hidden == 0 {
            return Err(Error::invalid("hidden_dim must be at least 1"));
        }
        Ok(RecurrentState {
            hidden,
            cell: f.bool("cell")?,
            dev: None,
            held: Vec::new(),
            pending: None,
            values: 0,
        })
    }
}

impl RecurrentState {
    /// Writes `values` (every output's, in order) into `outputs`.
    fn write(outputs: &mut [Tensor], values: &[f32]) -> Result<()> {
        let total: usize = outputs.iter().map(|t| t.numel()).sum();
        if values.len() != total {
            return Err(Error::invalid(format!(
                "recurrent_state holds {total} values, the checkpoint {}",
                values.len()
            )));
        }
        let mut at = 0;
        for t in outputs {
            let n = t.numel();
            t.write_from(&values[at..at + n])?;
            at += n;
        }
        Ok(())
    }
}

impl Layer for RecurrentState {
    fn setup(
        &mut self,
        ctx: &SetupContext<'_>,
        _: ParamFactoryMut<'_>,
    ) -> RResult<RVec<TensorSpec>, Error> {
        (|| -> Result<RVec<TensorSpec>> {
            let (batch, _) = ctx.single_input()?.shape.as_matrix();
            self.dev = Some(ctx.device.clone());
            let mut outs = vec![TensorSpec::new("output", [batch, self.hidden], DType::F32)];
            if self.cell {
                outs.push(TensorSpec::new("cell", [batch, self.hidden], DType::F32));
            }
            self.values = outs.len() * batch * self.hidden;
            Ok(outs.into())
        })()
        .into()
    }

    fn forward(
        &mut self,
        _: Phase,
        _: RSlice<'_, Tensor>,
        mut outputs: RSliceMut<'_, Tensor>,
    ) -> RResult<(), Error> {
        (|| {
            if self.held.is_empty() {
                self.held = outputs.iter().cloned().collect();
            }
            if let Some(values) = self.pending.take() {
                Self::write(outputs.as_mut_slice(), &values)?;
            }
            Ok(())
        })()
        .into()
    }

    fn backward(
        &mut self,
        _: Phase,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        _: RSlice<'_, Tensor>,
        mut grad_inputs: RSliceMut<'_, ROption<Tensor>>,
    ) -> RResult<(), Error> {
        (|| {
            if let ROption::RSome(dx) = &mut grad_inputs[0] {
                let dev = self
                    .dev
                    .as_ref()
                    .ok_or_else(|| Error::invalid("recurrent_state used before setup"))?;
                dev.fill(dx, 0.0)?;
            }
            Ok(())
        })()
        .into()
    }

    fn state(&self) -> RResult<RVec<u64>, Error> {
        (|| -> Result<RVec<u64>> {
            let mut out = Vec::new();
            match &self.pending {
                Some(values) => out.extend(values.iter().map(|v| v.to_bits() as u64)),
                // Not run yet: zeros, so that restoring this state (an evaluation starting
                // over) starts from zeros too.
                None if self.held.is_empty() => out.resize(self.values, 0),
                None => {
                    for t in &self.held {
                        out.extend(t.to_vec::<f32>()?.iter().map(|v| v.to_bits() as u64));
                    }
                }
            }
            Ok(out.into())
        })()
        .into()
    }

    fn restore_state(&mut self, state: RSlice<'_, u64>) -> RResult<(), Error> {
        (|| {
            let values: Vec<f32> = state.iter().map(|&b| f32::from_bits(b as u32)).collect();
            if values.is_empty() {
                // The state of a layer that has not run yet: zeros (a test pass starting over
                // from the beginning of its text starts from them too).
                self.pending = None;
                if let Some(dev) = &self.dev {
                    for t in &mut self.held {
                        dev.fill(t, 0.0)?;
                    }
                }
                return Ok(());
            }
            if self.held.is_empty() {
                self.pending = Some(values);
                return Ok(());
            }
            let mut held = self.held.clone();
            Self::write(&mut held, &values)
        })()
        .into()
    }
}

impl crate::capability::AccumulateGradients for Gru {
    fn accumulate_param_grads(&mut self, on: bool) {
        self.accumulate = on;
    }
}

impl crate::capability::AccumulateGradients for Lstm {
    fn accumulate_param_grads(&mut self, on: bool) {
        self.accumulate = on;
    }
}
