//! Checked recurrent-cell operations: the fused elementwise part of an LSTM step.

use crate::device::DeviceRef;
use crate::error::{Error, Result};
use crate::tensor::{Access, Tensor};
use abi_stable::std_types::ROption;

impl DeviceRef {
    /// The `(batch, hidden)` of an LSTM step whose gates are `gates` (`[batch, 4·hidden]`).
    fn lstm_dims(op: &'static str, gates: &Tensor) -> Result<(usize, usize)> {
        let (batch, wide) = gates.shape().as_matrix();
        if wide % 4 != 0 {
            return Err(Error::shape(
                op,
                format!(
                    "the gates have shape {} but need 4·hidden columns",
                    gates.shape()
                ),
            ));
        }
        Ok((batch, wide / 4))
    }

    /// The elementwise part of one LSTM step, see
    /// [`Device::lstm_cell`](crate::Device::lstm_cell): `gates` (`[batch, 4·hidden]`, gates
    /// i, f, o, g) go from pre-activations (plus `bias`) to activations in place, and the
    /// step's cell `c`, `tanh(c)` and output `h` are written.
    pub fn lstm_cell(
        &self,
        gates: &mut Tensor,
        bias: Option<&Tensor>,
        c_prev: &Tensor,
        c: &mut Tensor,
        tanh_c: &mut Tensor,
        h: &mut Tensor,
    ) -> Result<()> {
        const OP: &str = "lstm_cell";
        let (batch, hidden) = Self::lstm_dims(OP, gates)?;
        let n = batch * hidden;
        let gv = self.f32_view(OP, gates, 4 * n, "the gates")?;
        let bv = match bias {
            Some(b) => ROption::RSome(self.f32_view(OP, b, 4 * hidden, "the bias")?),
            None => ROption::RNone,
        };
        let pv = self.f32_view(OP, c_prev, n, "the previous cell")?;
        let cv = self.f32_view(OP, c, n, "the cell")?;
        let tv = self.f32_view(OP, tanh_c, n, "tanh of the cell")?;
        let hv = self.f32_view(OP, h, n, "the output")?;
        let outputs = [gv, cv, tv, hv];
        for (k, out) in outputs.iter().enumerate() {
            Self::check_alias(OP, out, &outputs[k + 1..], false)?;
            Self::check_alias(OP, out, &[pv], false)?;
            if let ROption::RSome(b) = &bv {
                Self::check_alias(OP, out, &[*b], false)?;
            }
        }
        let _access = match bias {
            Some(b) => Access::new(OP, &[gates, c, tanh_c, h], &[c_prev, b])?,
            None => Access::new(OP, &[gates, c, tanh_c, h], &[c_prev])?,
        };
        // SAFETY: checked above.
        unsafe { self.raw().lstm_cell(batch, hidden, gv, bv, pv, cv, tv, hv) }.into_result()
    }

    /// The gradient of [`DeviceRef::lstm_cell`], see
    /// [`Device::lstm_cell_backward`](crate::Device::lstm_cell_backward): from the
    /// activations `gates`, `c_prev`, `tanh_c` and the gradients `dh`, `dc` of the step's
    /// outputs, the gates' pre-activation gradients `d_gates` and (when given) `dc_prev`.
    #[allow(clippy::too_many_arguments)]
    pub fn lstm_cell_backward(
        &self,
        gates: &Tensor,
        c_prev: &Tensor,
        tanh_c: &Tensor,
        dh: &Tensor,
        dc: &Tensor,
        d_gates: &mut Tensor,
        dc_prev: Option<&mut Tensor>,
    ) -> Result<()> {
        const OP: &str = "lstm_cell_backward";
        let (batch, hidden) = Self::lstm_dims(OP, gates)?;
        let n = batch * hidden;
        let gv = self.f32_view(OP, gates, 4 * n, "the gates")?;
        let pv = self.f32_view(OP, c_prev, n, "the previous cell")?;
        let tv = self.f32_view(OP, tanh_c, n, "tanh of the cell")?;
        let hv = self.f32_view(OP, dh, n, "the output's gradient")?;
        let cv = self.f32_view(OP, dc, n, "the cell's gradient")?;
        let dv = self.f32_view(OP, d_gates, 4 * n, "the gates' gradient")?;
        let reads = [gv, pv, tv, hv, cv];
        Self::check_alias(OP, &dv, &reads, false)?;
        let pgv = match &dc_prev {
            Some(t) => {
                let v = self.f32_view(OP, t, n, "the previous cell's gradient")?;
                Self::check_alias(OP, &v, &[gv, pv, tv, hv, cv, dv], false)?;
                ROption::RSome(v)
            }
            None => ROption::RNone,
        };
        let _access = match dc_prev.as_deref() {
            Some(p) => Access::new(OP, &[&*d_gates, p], &[gates, c_prev, tanh_c])?,
            None => Access::new(OP, &[&*d_gates], &[gates, c_prev, tanh_c])?,
        };
        let _grads = Access::new(OP, &[], &[dh, dc])?;
        // SAFETY: checked above.
        unsafe {
            self.raw()
                .lstm_cell_backward(batch, hidden, gv, pv, tv, hv, cv, dv, pgv)
        }
        .into_result()
    }
}
