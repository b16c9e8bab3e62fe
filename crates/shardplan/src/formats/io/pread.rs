//! Vectored positional reads: many destination slices from one stretch of
//! a file in one system call.

use std::fs::File;

/// Destination slices that a stretch of contiguous source bytes fills,
/// read together.
pub(crate) struct ReadBatch<'f, 'b> {
    file: &'f File,
    /// Source offset of the first slice and of the byte after the last.
    start: u64,
    next: u64,
    bufs: Vec<std::io::IoSliceMut<'b>>,
}

/// Slices per vectored read (Linux's `IOV_MAX`).
const MAX_SLICES: usize = 1024;

impl<'f, 'b> ReadBatch<'f, 'b> {
    #[inline]
    pub(crate) fn new(file: &'f File) -> Self {
        ReadBatch {
            file,
            start: 0,
            next: 0,
            bufs: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, src: u64, buf: &'b mut [u8]) -> std::io::Result<()> {
        if !self.bufs.is_empty() && (src != self.next || self.bufs.len() == MAX_SLICES) {
            self.flush()?;
        }
        if self.bufs.is_empty() {
            self.start = src;
            self.next = src;
        }
        self.next += buf.len() as u64;
        self.bufs.push(std::io::IoSliceMut::new(buf));
        Ok(())
    }

    #[inline]
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        read_exact_vectored_at(self.file, &mut self.bufs, self.start)?;
        self.bufs.clear();
        Ok(())
    }
}

/// Reads `bufs.len()` slices' worth of bytes at `offset`, in order, until
/// every slice is full.
fn read_exact_vectored_at(
    file: &File,
    mut bufs: &mut [std::io::IoSliceMut<'_>],
    mut offset: u64,
) -> std::io::Result<()> {
    std::io::IoSliceMut::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = read_vectored_at(file, bufs, offset)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file ends before the tensor data",
            ));
        }
        offset += n as u64;
        std::io::IoSliceMut::advance_slices(&mut bufs, n);
    }
    Ok(())
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // IO: see the SAFETY comment inside
fn read_vectored_at(
    file: &File,
    bufs: &mut [std::io::IoSliceMut<'_>],
    offset: u64,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let count = bufs.len().min(MAX_SLICES) as libc::c_int;
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset too large"))?;
    loop {
        // SAFETY: `IoSliceMut` is ABI-compatible with `iovec` on Unix (its
        // documented guarantee); the slices are valid, exclusively borrowed
        // buffers for the duration of the call, and `count` does not exceed
        // their number.
        let n = unsafe {
            libc::preadv(
                file.as_raw_fd(),
                bufs.as_mut_ptr().cast::<libc::iovec>(),
                count,
                offset,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Without `preadv`: the first non-empty slice by itself.
#[cfg(not(target_os = "linux"))]
fn read_vectored_at(
    file: &File,
    bufs: &mut [std::io::IoSliceMut<'_>],
    offset: u64,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let Some(b) = bufs.iter_mut().find(|b| !b.is_empty()) else {
        return Ok(0);
    };
    loop {
        match file.read_at(&mut b[..], offset) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}
