//! NCCL: sums of tensors across GPUs (the collective that data-parallel workers on several
//! GPUs all-reduce their gradients with).
//!
//! NCCL is loaded at run time, like the rest of CUDA, under the name its packages install:
//! `libnccl.so.2` (the `nvidia-nccl-cu13` wheel PyTorch brings, Debian's `libnccl2`), or
//! `libnccl.so`. cudarc's NCCL module looks only for `libnccl.so`, which neither package
//! installs, and panics when it is missing; so this module binds the few functions it uses
//! itself (`ncclGetVersion`, `ncclGetUniqueId`, `ncclCommInitRank`, `ncclCommInitAll`,
//! `ncclAllReduce`, `ncclReduce`, `ncclBroadcast`, `ncclGroupStart`/`End`, `ncclCommDestroy`,
//! `ncclCommAbort`, `ncclGetErrorString`) and a missing library is an error value naming it.
//!
//! The ranks of a communicator meet through an [`NcclId`] that one of them makes and sends to
//! the others as 128 bytes (through the job's transport: a message or MPI); in one process,
//! [`Communicator::group`] makes one per GPU at once.

use crate::device::CudaDevice;
use crate::driver::Fallible;
use crate::gpu::Gpu;
use crate::launch::ptr;
use singa_core::{DType, Error, Result, Tensor};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, OnceLock};

/// NCCL's opaque communicator.
type RawComm = *mut c_void;
/// `ncclResult_t`: 0 is success.
type Status = c_int;

/// `ncclUniqueId`: what the ranks of one communicator share.
#[repr(C)]
#[derive(Clone, Copy)]
struct RawId {
    internal: [c_char; NcclId::LEN],
}

/// `ncclFloat32` of `ncclDataType_t`.
const NCCL_FLOAT32: c_int = 7;
/// `ncclSum` of `ncclRedOp_t`.
const NCCL_SUM: c_int = 0;

/// The library and the functions this module calls, loaded once per process.
struct Library {
    get_version: unsafe extern "C" fn(*mut c_int) -> Status,
    get_unique_id: unsafe extern "C" fn(*mut RawId) -> Status,
    comm_init_rank: unsafe extern "C" fn(*mut RawComm, c_int, RawId, c_int) -> Status,
    comm_init_all: unsafe extern "C" fn(*mut RawComm, c_int, *const c_int) -> Status,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        RawComm,
        *mut c_void,
    ) -> Status,
    reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        c_int,
        RawComm,
        *mut c_void,
    ) -> Status,
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        RawComm,
        *mut c_void,
    ) -> Status,
    group_start: unsafe extern "C" fn() -> Status,
    group_end: unsafe extern "C" fn() -> Status,
    comm_destroy: unsafe extern "C" fn(RawComm) -> Status,
    comm_abort: unsafe extern "C" fn(RawComm) -> Status,
    error_string: unsafe extern "C" fn(Status) -> *const c_char,
    /// The file name it was loaded under.
    file: &'static str,
    /// Kept loaded for the life of the process (the functions above point into it).
    _lib: libloading::Library,
}

/// The file names tried, in order, on the loader's path.
const FILES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

/// NCCL, loaded on first use, or why it could not be.
fn library() -> Result<&'static Library> {
    static LIB: OnceLock<std::result::Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(load)
        .as_ref()
        .map_err(|why| Error::device("nccl", why.clone()))
}

fn load() -> std::result::Result<Library, String> {
    let mut failures = Vec::new();
    for file in FILES {
        // SAFETY: loading NCCL runs only its initialisers, which have no preconditions.
        match unsafe { libloading::Library::new(file) } {
            Ok(lib) => return bind(lib, file),
            // dlerror's text names the file.
            Err(e) => failures.push(error_chain(&e)),
        }
    }
    Err(format!(
        "NCCL was not found ({}): install it (`pip install nvidia-nccl-cu13` and put its \
         nvidia/nccl/lib directory on LD_LIBRARY_PATH, or the libnccl2 package)",
        failures.join("; ")
    ))
}

/// libloading's error with its causes (its own text is only "dlopen failed").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

fn bind(lib: libloading::Library, file: &'static str) -> std::result::Result<Library, String> {
    /// The function `name` of `lib`, as the type it is assigned to.
    fn symbol<T: Copy>(
        lib: &libloading::Library,
        file: &str,
        name: &str,
    ) -> std::result::Result<T, String> {
        // SAFETY: the types given at the call sites below are NCCL's declarations.
        unsafe { lib.get::<T>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| {
                format!(
                    "{file} has no {name} ({}): NCCL 2.x is needed",
                    error_chain(&e)
                )
            })
    }
    Ok(Library {
        get_version: symbol(&lib, file, "ncclGetVersion")?,
        get_unique_id: symbol(&lib, file, "ncclGetUniqueId")?,
        comm_init_rank: symbol(&lib, file, "ncclCommInitRank")?,
        comm_init_all: symbol(&lib, file, "ncclCommInitAll")?,
        all_reduce: symbol(&lib, file, "ncclAllReduce")?,
        reduce: symbol(&lib, file, "ncclReduce")?,
        broadcast: symbol(&lib, file, "ncclBroadcast")?,
        group_start: symbol(&lib, file, "ncclGroupStart")?,
        group_end: symbol(&lib, file, "ncclGroupEnd")?,
        comm_destroy: symbol(&lib, file, "ncclCommDestroy")?,
        comm_abort: symbol(&lib, file, "ncclCommAbort")?,
        error_string: symbol(&lib, file, "ncclGetErrorString")?,
        file,
        _lib: lib,
    })
}

impl Library {
    /// A status as a result, saying what was being done.
    fn check(&self, status: Status, what: &str) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
        // SAFETY: NCCL returns a static string for every status.
        let text = unsafe { CStr::from_ptr((self.error_string)(status)) };
        Err(Error::device(
            "nccl",
            format!("{what}: {} (NCCL status {status})", text.to_string_lossy()),
        ))
    }
}

/// Whether NCCL can be loaded here.
pub fn nccl_present() -> bool {
    library().is_ok()
}

/// NCCL's version (`2.27.7`) and the file it was loaded from, or why it is missing.
pub fn nccl_version() -> Result<String> {
    let lib = library()?;
    let mut code = 0;
    // SAFETY: a plain out-parameter.
    lib.check(
        unsafe { (lib.get_version)(&mut code) },
        "reading NCCL's version",
    )?;
    // NCCL >= 2.9 encodes major · 10000 + minor · 100 + patch.
    let (major, minor, patch) = (code / 10_000, code / 100 % 100, code % 100);
    Ok(format!("{major}.{minor}.{patch} ({})", lib.file))
}

/// What the ranks of one communicator share: made by one of them ([`NcclId::new`]) and sent to
/// the others as bytes ([`NcclId::as_bytes`], [`NcclId::from_bytes`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NcclId([u8; NcclId::LEN]);

impl NcclId {
    /// The length of an id in bytes (`NCCL_UNIQUE_ID_BYTES`).
    pub const LEN: usize = 128;

    /// A fresh id. Needs NCCL, but no GPU.
    pub fn new() -> Result<NcclId> {
        let lib = library()?;
        let mut raw = RawId {
            internal: [0; Self::LEN],
        };
        // SAFETY: `raw` is an `ncclUniqueId` to write.
        lib.check(
            unsafe { (lib.get_unique_id)(&mut raw) },
            "making an NCCL id",
        )?;
        Ok(NcclId(raw.internal.map(|c| c as u8)))
    }

    /// The id as the bytes the other ranks receive.
    pub fn as_bytes(&self) -> &[u8; NcclId::LEN] {
        &self.0
    }

    /// The id another rank sent.
    pub fn from_bytes(bytes: &[u8]) -> Result<NcclId> {
        let bytes: [u8; Self::LEN] = bytes.try_into().map_err(|_| {
            Error::invalid(format!(
                "an NCCL id is {} bytes, this message has {}",
                Self::LEN,
                bytes.len()
            ))
        })?;
        Ok(NcclId(bytes))
    }

    fn raw(&self) -> RawId {
        RawId {
            internal: self.0.map(|b| b as c_char),
        }
    }
}

impl std::fmt::Debug for NcclId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclId({:02x?}…)", &self.0[..8])
    }
}

/// One rank of an NCCL communicator, on one GPU: sums tensors of that GPU with the other
/// ranks' on the GPU's stream, in the order of the device's other operations.
pub struct Communicator {
    comm: RawComm,
    gpu: Arc<Gpu>,
    rank: usize,
    ranks: usize,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time: `&mut self`
// (or a group call holding every rank) guarantees that.
unsafe impl Send for Communicator {}

impl Communicator {
    /// Rank `rank` of `ranks` on `device`'s GPU, meeting the others through `id`. Blocks until
    /// every rank has joined (each from its own process or thread).
    pub fn new(device: &CudaDevice, rank: usize, ranks: usize, id: &NcclId) -> Result<Self> {
        if rank >= ranks {
            return Err(Error::invalid(format!(
                "NCCL rank {rank} of {ranks} (ranks are numbered from 0)"
            )));
        }
        let lib = library()?;
        device.bind()?;
        let mut comm = std::ptr::null_mut();
        // SAFETY: `comm` is written by NCCL; the GPU's context is current on this thread.
        lib.check(
            unsafe { (lib.comm_init_rank)(&mut comm, ranks as c_int, id.raw(), rank as c_int) },
            &format!(
                "joining NCCL as rank {rank} of {ranks} on {}",
                device.gpu.name
            ),
        )?;
        Ok(Communicator {
            comm,
            gpu: Arc::clone(&device.gpu),
            rank,
            ranks,
        })
    }

    /// One communicator per device, rank `i` on `devices[i]`, all made by this thread (the
    /// devices on distinct GPUs, as NCCL requires).
    pub fn group(devices: &[CudaDevice]) -> Result<Vec<Communicator>> {
        let lib = library()?;
        let ordinals: Vec<c_int> = devices
            .iter()
            .map(|d| d.gpu.ctx.ordinal() as c_int)
            .collect();
        if let Some(twice) = (1..ordinals.len()).find(|&i| ordinals[..i].contains(&ordinals[i])) {
            return Err(Error::invalid(format!(
                "an NCCL group needs distinct GPUs; GPU {} is named twice",
                ordinals[twice]
            )));
        }
        let mut comms = vec![std::ptr::null_mut(); devices.len()];
        // SAFETY: `comms` has a place for every device listed.
        lib.check(
            unsafe {
                (lib.comm_init_all)(
                    comms.as_mut_ptr(),
                    ordinals.len() as c_int,
                    ordinals.as_ptr(),
                )
            },
            &format!("making NCCL communicators for GPUs {ordinals:?}"),
        )?;
        Ok(comms
            .into_iter()
            .zip(devices)
            .enumerate()
            .map(|(rank, (comm, d))| Communicator {
                comm,
                gpu: Arc::clone(&d.gpu),
                rank,
                ranks: devices.len(),
            })
            .collect())
    }

    /// This rank's number.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// Replaces `t` (an f32 tensor of this rank's GPU) by its sum over every rank, queued on
    /// the GPU's stream. Every rank must call it with a tensor of the same length.
    pub fn all_reduce_sum(&mut self, t: &mut Tensor) -> Result<()> {
        self.enqueue(t)
    }

    /// On rank `root`, replaces `t` by its sum over every rank (the other ranks' `t` are left
    /// as they are), queued on the GPU's stream. Every rank must call it with a tensor of the
    /// same length and the same root.
    pub fn reduce_sum(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.check_root(root)?;
        let (at, len, stream) = self.place(t)?;
        let lib = library()?;
        // SAFETY: as in `enqueue` (a root of the communicator); NCCL sums in place.
        lib.check(
            unsafe {
                (lib.reduce)(
                    at,
                    at,
                    len,
                    NCCL_FLOAT32,
                    NCCL_SUM,
                    root as c_int,
                    self.comm,
                    stream,
                )
            },
            &format!("summing {len} values at NCCL rank {root} of {}", self.ranks),
        )
    }

    /// Replaces every rank's `t` by rank `root`'s, queued on the GPU's stream. Every rank must
    /// call it with a tensor of the same length and the same root.
    pub fn broadcast(&mut self, t: &mut Tensor, root: usize) -> Result<()> {
        self.check_root(root)?;
        let (at, len, stream) = self.place(t)?;
        let lib = library()?;
        // SAFETY: as in `enqueue` (a root of the communicator); NCCL broadcasts in place.
        lib.check(
            unsafe { (lib.broadcast)(at, at, len, NCCL_FLOAT32, root as c_int, self.comm, stream) },
            &format!(
                "broadcasting {len} values from NCCL rank {root} of {}",
                self.ranks
            ),
        )
    }

    /// Fails unless `root` is a rank of this communicator.
    fn check_root(&self, root: usize) -> Result<()> {
        match root < self.ranks {
            true => Ok(()),
            false => Err(Error::invalid(format!(
                "NCCL root {root}, but the communicator has {} ranks",
                self.ranks
            ))),
        }
    }

    /// Checks `t` and binds the GPU's context: `t`'s address and length, and the stream.
    fn place(&self, t: &Tensor) -> Result<(*mut c_void, usize, *mut c_void)> {
        self.check(t)?;
        let view = t.view();
        self.gpu
            .ctx
            .bind_to_thread()
            .or_device("binding the CUDA context")?;
        let stream = self.gpu.stream.cu_stream() as *mut c_void;
        Ok((ptr(&view) as *mut c_void, view.len, stream))
    }

    /// Gives up on the communicator (this rank's worker stopped): its operations still queued
    /// end, and the other ranks' fail instead of waiting for this one forever.
    pub fn abort(mut self) {
        if let Ok(lib) = library() {
            // SAFETY: the communicator is this value's; aborting frees it, so `drop` must not.
            unsafe { (lib.comm_abort)(self.comm) };
            self.comm = std::ptr::null_mut();
        }
    }

    /// [`Communicator::all_reduce_sum`] for every rank of a [`Communicator::group`] at once,
    /// `tensors[i]` on rank `i` (one thread issuing for every GPU must group the calls, or the
    /// first would wait for the others forever).
    pub fn all_reduce_sum_group(comms: &mut [Communicator], tensors: &mut [Tensor]) -> Result<()> {
        if comms.len() != tensors.len() {
            return Err(Error::invalid(format!(
                "{} NCCL ranks, {} tensors",
                comms.len(),
                tensors.len()
            )));
        }
        // Every check before the group starts: a group with a rank left out would wait on the
        // GPUs forever.
        let ranks = comms.len();
        for (i, (c, t)) in comms.iter().zip(tensors.iter()).enumerate() {
            if c.rank != i || c.ranks != ranks {
                return Err(Error::invalid(format!(
                    "an NCCL group call needs every rank of one group in order: place {i} holds rank {} of {}, of {ranks} given",
                    c.rank, c.ranks
                )));
            }
            c.check(t)?;
            if t.numel() != tensors[0].numel() {
                return Err(Error::invalid(format!(
                    "NCCL ranks sum tensors of one length: rank 0 has {} values, rank {i} {}",
                    tensors[0].numel(),
                    t.numel()
                )));
            }
        }
        let lib = library()?;
        // SAFETY: no arguments; every start is matched by the end below.
        lib.check(unsafe { (lib.group_start)() }, "starting an NCCL group")?;
        let queued = comms
            .iter_mut()
            .zip(tensors.iter_mut())
            .try_for_each(|(c, t)| c.enqueue(t));
        // SAFETY: as above; the group must end even when a call failed.
        let ended = lib.check(unsafe { (lib.group_end)() }, "ending an NCCL group");
        queued.and(ended)
    }

    /// Fails unless this rank can sum `t`: f32, on this rank's GPU.
    fn check(&self, t: &Tensor) -> Result<()> {
        if t.dtype() != DType::F32 {
            return Err(Error::unsupported(
                "nccl",
                format!("sums of {} tensors (f32 only)", t.dtype()),
            ));
        }
        let space = t.device().info().memory_space;
        if space.as_str() != self.gpu.name {
            return Err(Error::invalid(format!(
                "NCCL rank {} is on {}, the tensor on {space}",
                self.rank, self.gpu.name
            )));
        }
        Ok(())
    }

    /// Queues the in-place sum of `t`.
    fn enqueue(&mut self, t: &mut Tensor) -> Result<()> {
        let (at, len, stream) = self.place(t)?;
        let lib = library()?;
        // SAFETY: `at` is `len` f32s of this GPU's memory, alive while `t` is; the sum is
        // queued on the stream every operation on the tensor is queued on.
        lib.check(
            unsafe { (lib.all_reduce)(at, at, len, NCCL_FLOAT32, NCCL_SUM, self.comm, stream) },
            &format!("summing {len} values over {} NCCL ranks", self.ranks),
        )
    }
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Communicator(rank {} of {} on {})",
            self.rank, self.ranks, self.gpu.name
        )
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        if self.comm.is_null() {
            return; // aborted
        }
        if let Ok(lib) = library() {
            // SAFETY: the communicator is this value's, destroyed once.
            unsafe { (lib.comm_destroy)(self.comm) };
        }
    }
}
