//! A pipelined output file for large checkpoints.
//!
//! [`StreamFile`] takes the bytes of a file in order, in fixed windows that
//! the caller fills in place ([`StreamFile::space`], [`StreamFile::commit`])
//! or copies into ([`StreamFile::put`]). Each full window is summed
//! ([`Checksum`]) and handed to two writer threads, which write it at its
//! offset while the caller fills the next: reading the sources and writing
//! the output overlap, and two writes in flight keep the disk busier than
//! one.
//!
//! On Linux the file is opened with `O_DIRECT` when the file system allows
//! it: the windows go from memory to the disk without a copy into the page
//! cache, so writing 16 GB does not evict the source checkpoint the caller
//! is reading from the cache. Direct IO needs 4096-byte aligned buffers,
//! lengths and offsets: windows are aligned, the last one is padded with
//! zeros and the file is cut back to its true length before the fsync.
//! Without direct IO the same pipeline writes through the page cache.
//!
//! Memory: four windows.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::checksum::Checksum;

/// Alignment of buffers, lengths and offsets for direct IO.
pub const ALIGN: usize = 4096;

/// Windows in flight: one being filled, two being written, one spare.
const BUFFERS: usize = 4;

/// Writer threads.
const WRITERS: usize = 2;

/// The largest window: four of them are in memory.
pub const MAX_WINDOW: usize = 1 << 30;

/// The window size used for a requested `window`: a multiple of [`ALIGN`],
/// at least one block and at most [`MAX_WINDOW`].
fn window_size(window: usize) -> usize {
    window.clamp(1, MAX_WINDOW).div_ceil(ALIGN) * ALIGN
}

/// A zeroed buffer whose usable part starts on an [`ALIGN`] boundary.
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN];
        // The offset that aligns the allocation, from its address.
        let start = (ALIGN - raw.as_ptr() as usize % ALIGN) % ALIGN;
        Aligned { raw, start, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// A filled window and where it goes.
struct Job {
    buf: Aligned,
    /// Bytes to write (padded to [`ALIGN`] under direct IO).
    len: usize,
    offset: u64,
}

/// A file written through windows and writer threads; see the
/// [module documentation](self).
pub struct StreamFile {
    /// Taken by `finish`.
    file: Option<Arc<File>>,
    direct: bool,
    cur: Aligned,
    filled: usize,
    /// File offset of the current window.
    base: u64,
    jobs: Option<SyncSender<Job>>,
    returned: Receiver<io::Result<Aligned>>,
    writers: Vec<JoinHandle<()>>,
    sum: Checksum,
}

impl StreamFile {
    /// Creates (truncating) `path`, with direct IO when `direct` is asked
    /// and the file system supports it. `window` is rounded up to a
    /// multiple of [`ALIGN`] and held to at most [`MAX_WINDOW`].
    ///
    /// # Errors
    ///
    /// IO errors of creating the file or starting the writer threads.
    pub fn create(path: &Path, window: usize, direct: bool) -> io::Result<Self> {
        let (file, direct) = open(path, direct)?;
        let file = Arc::new(file);
        let window = window_size(window);
        let (jobs_tx, jobs_rx) = sync_channel::<Job>(BUFFERS);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (ret_tx, returned) = sync_channel::<io::Result<Aligned>>(BUFFERS);
        for _ in 1..BUFFERS {
            ret_tx
                .send(Ok(Aligned::new(window)))
                .expect("the receiver is alive");
        }
        let mut writers = Vec::with_capacity(WRITERS);
        for i in 0..WRITERS {
            let (file, jobs_rx, ret_tx) = (file.clone(), jobs_rx.clone(), ret_tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("shardplan-writer-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = match jobs_rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        let r = write_window(&file, &job).map(|()| job.buf);
                        if ret_tx.send(r).is_err() {
                            return;
                        }
                    }
                })?;
            writers.push(handle);
        }
        Ok(StreamFile {
            file: Some(file),
            direct,
            cur: Aligned::new(window),
            filled: 0,
            base: 0,
            jobs: Some(jobs_tx),
            returned,
            writers,
            sum: Checksum::default(),
        })
    }

    /// True when the file is written with direct IO.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The unfilled rest of the current window (never empty): fill a
    /// prefix of it, then [`StreamFile::commit`] that many bytes.
    pub fn space(&mut self) -> &mut [u8] {
        let filled = self.filled;
        &mut self.cur.bytes_mut()[filled..]
    }

    /// Marks `n` more bytes of the current window as filled; a full window
    /// goes to the writers.
    ///
    /// # Errors
    ///
    /// The error of an earlier write, or `InvalidInput` when `n` exceeds
    /// the space.
    pub fn commit(&mut self, n: usize) -> io::Result<()> {
        if n > self.cur.len - self.filled {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "committed more than the window holds",
            ));
        }
        self.filled += n;
        if self.filled == self.cur.len {
            self.send_window()?;
        }
        Ok(())
    }

    /// Copies `bytes` in.
    ///
    /// # Errors
    ///
    /// As [`StreamFile::commit`].
    pub fn put(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let space = self.space();
            let k = space.len().min(bytes.len());
            space[..k].copy_from_slice(&bytes[..k]);
            bytes = &bytes[k..];
            self.commit(k)?;
        }
        Ok(())
    }

    /// Bytes taken so far.
    pub fn len(&self) -> u64 {
        self.base + self.filled as u64
    }

    /// Sums and sends the filled part of the current window, and takes a
    /// free buffer back.
    fn send_window(&mut self) -> io::Result<()> {
        let filled = self.filled;
        self.sum.update(&self.cur.bytes()[..filled]);
        let len = if self.direct {
            // Direct IO writes whole blocks: zero the padding, which may
            // hold bytes of an earlier window.
            let padded = filled.div_ceil(ALIGN) * ALIGN;
            self.cur.bytes_mut()[filled..padded].fill(0);
            padded
        } else {
            filled
        };
        let next = self
            .returned
            .recv()
            .map_err(|_| io::Error::other("the writer threads stopped"))??;
        let buf = std::mem::replace(&mut self.cur, next);
        let offset = self.base;
        self.base += filled as u64;
        self.filled = 0;
        self.jobs
            .as_ref()
            .expect("open until finish")
            .send(Job { buf, len, offset })
            .map_err(|_| io::Error::other("the writer threads stopped"))
    }

    /// Writes what is left, waits for the writers, cuts the file to its
    /// length, fsyncs it, and returns it with its length and checksum.
    ///
    /// # Errors
    ///
    /// The first write error, or an error of truncating or syncing.
    pub fn finish(mut self) -> io::Result<(File, u64, Checksum)> {
        let len = self.len();
        let mut result = if self.filled > 0 {
            self.send_window()
        } else {
            Ok(())
        };
        // Closing the job channel stops the writers once it is drained.
        self.jobs = None;
        for w in self.writers.drain(..) {
            if w.join().is_err() && result.is_ok() {
                result = Err(io::Error::other("a writer thread panicked"));
            }
        }
        while let Ok(r) = self.returned.try_recv() {
            if let Err(e) = r
                && result.is_ok()
            {
                result = Err(e);
            }
        }
        result?;
        let file = self
            .file
            .take()
            .and_then(|f| Arc::try_unwrap(f).ok())
            .ok_or_else(|| io::Error::other("the file is still shared"))?;
        // Direct IO padded the last block; cut it off.
        file.set_len(len)?;
        file.sync_all()?;
        Ok((file, len, self.sum))
    }
}

impl Drop for StreamFile {
    fn drop(&mut self) {
        // Stop the writers (after an error the caller removes the file).
        self.jobs = None;
        for w in self.writers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Writes one window. A file system may accept `O_DIRECT` at open and
/// refuse the writes (it needs larger blocks than [`ALIGN`]); then the file
/// is switched to buffered writes and the window written again (offsets and
/// lengths stay valid either way).
fn write_window(file: &File, job: &Job) -> io::Result<()> {
    let data = &job.buf.bytes()[..job.len];
    match file.write_all_at(data, job.offset) {
        #[cfg(target_os = "linux")]
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) && clear_direct(file)? => {
            file.write_all_at(data, job.offset)
        }
        r => r,
    }
}

/// Turns `O_DIRECT` off on `file`; false when it was not on.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // IO: see the SAFETY comment inside
fn clear_direct(file: &File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this `File` owns, with the documented
    // F_GETFL / F_SETFL commands and an int argument.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::O_DIRECT == 0 {
        return Ok(false);
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(true)
}

/// Opens `path` for writing, with `O_DIRECT` when asked and supported.
fn open(path: &Path, direct: bool) -> io::Result<(File, bool)> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(target_os = "linux")]
    if direct {
        use std::os::unix::fs::OpenOptionsExt;
        let mut with = opts.clone();
        with.custom_flags(libc::O_DIRECT);
        match with.open(path) {
            Ok(f) => return Ok((f, true)),
            // tmpfs and some other file systems refuse O_DIRECT.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    let _ = direct;
    opts.open(path).map(|f| (f, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// The module's example: a header put, then data filled in place.
    #[test]
    fn example_put_then_fill() -> std::io::Result<()> {
        let dir = std::env::temp_dir().join(format!("shardplan-doc-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("out.bin");
        let mut f = StreamFile::create(&path, 4096, true)?;
        f.put(b"header")?;
        // Filled in place: a prefix of the room left in the window.
        f.space()[..4].copy_from_slice(b"data");
        f.commit(4)?;
        let (_, len, sum) = f.finish()?;
        assert_eq!(len, 10);
        assert_eq!(std::fs::read(&path)?, b"headerdata");
        assert_eq!(sum.len(), 10);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    /// Every mix of window size, put and in-place fill, direct or not,
    /// writes exactly the bytes given and sums them as `Checksum` does.
    #[test]
    fn writes_and_sums_what_it_is_given() {
        let dir = std::env::temp_dir().join(format!("shardplan-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (total, window, direct) in [
            (0usize, 4096usize, true),
            (1, 4096, true),
            (4095, 4096, true),
            (4096, 4096, true),
            (4097, 4096, false),
            (100_000, 8192, true),
            (100_000, 8192, false),
            (1 << 20, 1, true),
        ] {
            let data = pattern(total);
            let path = dir.join(format!("f-{total}-{window}-{direct}"));
            let mut s = StreamFile::create(&path, window, direct).unwrap();
            // Alternate: a put of 3000 bytes, then an in-place fill.
            let mut at = 0;
            let mut turn = 0;
            while at < total {
                if turn % 2 == 0 {
                    let k = 3000.min(total - at);
                    s.put(&data[at..at + k]).unwrap();
                    at += k;
                } else {
                    let space = s.space();
                    let k = space.len().min(total - at).min(5000);
                    space[..k].copy_from_slice(&data[at..at + k]);
                    s.commit(k).unwrap();
                    at += k;
                }
                turn += 1;
            }
            assert_eq!(s.len(), total as u64);
            let (_, len, sum) = s.finish().unwrap();
            assert_eq!(len, total as u64);
            let mut back = Vec::new();
            File::open(&path).unwrap().read_to_end(&mut back).unwrap();
            assert!(
                back == data,
                "{total} bytes, window {window}, direct {direct}"
            );
            let mut want = Checksum::default();
            want.update(&data);
            assert_eq!(sum.hex(), want.hex());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file whose writes are refused under direct IO is switched to
    /// buffered writes: simulated by a misaligned write, which direct IO
    /// refuses with EINVAL.
    #[cfg(target_os = "linux")]
    #[test]
    fn refused_direct_writes_fall_back() {
        let dir = std::env::temp_dir().join(format!("shardplan-stream-d-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let (file, direct) = open(&path, true).unwrap();
        if direct {
            let mut buf = Aligned::new(2 * ALIGN);
            buf.bytes_mut()[..3].copy_from_slice(b"abc");
            // Length 3 at offset 1: not aligned.
            let job = Job {
                buf,
                len: 3,
                offset: 1,
            };
            write_window(&file, &job).unwrap();
            assert!(!clear_direct(&file).unwrap(), "O_DIRECT is off now");
            let mut back = Vec::new();
            File::open(&path).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, b"\0abc");
        } else {
            eprintln!("SKIPPED: {} does not support O_DIRECT", dir.display());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn window_sizes_are_whole_blocks_and_bounded() {
        let cases = [
            (0, ALIGN),
            (1, ALIGN),
            (ALIGN, ALIGN),
            (ALIGN + 1, 2 * ALIGN),
            (MAX_WINDOW, MAX_WINDOW),
            (usize::MAX, MAX_WINDOW),
        ];
        for (asked, got) in cases {
            assert_eq!(window_size(asked), got, "{asked}");
        }
    }

    #[test]
    fn buffers_are_aligned() {
        for len in [1, 4096, 10_000] {
            let mut b = Aligned::new(len);
            assert_eq!(b.bytes_mut().as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.bytes().len(), len);
        }
    }

    #[test]
    fn overcommitting_is_refused() {
        let dir = std::env::temp_dir().join(format!("shardplan-stream-o-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = StreamFile::create(&dir.join("f"), 4096, false).unwrap();
        assert!(s.commit(4097).is_err());
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
