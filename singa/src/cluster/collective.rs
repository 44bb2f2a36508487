//! A worker's member of its group's collective (`[cluster] collective`): NCCL's between CUDA
//! workers (feature `cuda`), otherwise the one the fabric hands out (in memory, between the
//! emulated processes of one OS process).

use super::build::Plan;
use singa_comm::Collective;
use singa_core::{Addr, Error, Result};

/// Worker `w`'s member (on rank `rank`): member `i` is worker `i`, beside server `i`.
pub(super) fn member(plan: &Plan<'_>, rank: usize, w: Addr) -> Result<Box<dyn Collective>> {
    let c = &plan.job.cluster;
    let t = plan.topology;
    let device = plan.worker_device.for_worker(c, t.worker_index(w));
    let cuda = device.kind == crate::config::DeviceKind::Cuda;
    if cuda && plan.fabric.local_ranks().len() == plan.fabric.ranks() {
        // Every member in this process, so on this machine: NCCL needs a GPU for each.
        let gpu = |i: usize| plan.job.device.for_worker(c, i).gpu;
        if let Some(i) = (1..c.nworkers()).find(|&i| (0..i).any(|j| gpu(j) == gpu(i))) {
            return Err(Error::invalid(format!(
                "NCCL's collectives need a GPU per worker, but worker {i} would share GPU {} \
                 with another: give each its own with [cluster] gpus = [0, 1, ...], or set \
                 collective = false",
                gpu(i)
            )));
        }
    }
    let member = match cuda {
        #[cfg(feature = "cuda")]
        true => nccl::member(&device, w.id as usize, c.nworkers())?,
        _ => plan.fabric.collective(rank, plan.timeout())?,
    };
    if member.member() != w.id as usize || member.members() != c.nworkers() {
        return Err(Error::invalid(format!(
            "{w} got member {} of a collective group of {}; expected member {} of {}",
            member.member(),
            member.members(),
            w.id,
            c.nworkers()
        )));
    }
    Ok(member)
}

#[cfg(feature = "cuda")]
mod nccl {
    use crate::config::DeviceConfig;
    use singa_comm::Collective;
    use singa_core::{Error, Result, Tensor};
    use singa_cuda::{Communicator, CudaDevice, NcclId};

    /// A CUDA worker's member of an NCCL group: it joins (`ncclCommInitRank`, which waits
    /// for every member) with member 0's id when the runtime hands it over, at the first
    /// step, when every worker runs. Its sums and broadcasts are queued on the GPU's stream,
    /// in order with the backward pass that made the gradients and the update that reads
    /// them.
    struct NcclMember {
        device: CudaDevice,
        member: usize,
        members: usize,
        comm: Option<Communicator>,
    }

    pub(super) fn member(
        device: &DeviceConfig,
        member: usize,
        members: usize,
    ) -> Result<Box<dyn Collective>> {
        let device = CudaDevice::new(device.gpu, device.precision)?;
        Ok(Box::new(NcclMember {
            device,
            member,
            members,
            comm: None,
        }))
    }

    impl NcclMember {
        fn comm(&mut self) -> Result<&mut Communicator> {
            let member = self.member;
            self.comm.as_mut().ok_or_else(|| {
                Error::invalid(format!(
                    "NCCL member {member}: an operation before it joined with member 0's id"
                ))
            })
        }
    }

    impl Collective for NcclMember {
        fn member(&self) -> usize {
            self.member
        }

        fn members(&self) -> usize {
            self.members
        }

        fn reduce_sum(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
            self.comm()?.reduce_sum(t, root)
        }

        fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
            self.comm()?.broadcast(t, root)
        }

        fn needs_invitation(&self) -> bool {
            true
        }

        fn invitation(&mut self) -> Result<Vec<u8>> {
            Ok(NcclId::new()?.as_bytes().to_vec())
        }

        fn abort(&mut self) {
            if let Some(comm) = self.comm.take() {
                comm.abort();
            }
        }

        fn join(&mut self, invitation: &[u8]) -> Result<()> {
            let id = NcclId::from_bytes(invitation)?;
            let comm =
                Communicator::new(&self.device, self.member, self.members, &id).map_err(|e| {
                    // NCCL refuses two members on one GPU of one machine.
                    e.context(format!(
                        "NCCL member {} of {} (each needs a GPU of its own: [cluster] gpus = \
                         [0, 1, ...] on one machine)",
                        self.member, self.members
                    ))
                })?;
            self.comm = Some(comm);
            Ok(())
        }
    }
}
