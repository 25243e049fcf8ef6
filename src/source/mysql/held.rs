//! Events held until their group's end is read: in memory up to a bound, then in a spill file.
//!
//! A sink cannot un-send, and a binlog group may end in ROLLBACK (MariaDB writes the rows of
//! some rolled-back transactions, then `ROLLBACK`; its GTID event's flags do not say so in
//! advance: checked on 10.11.19, such groups carry `FL_TRANSACTIONAL` like committed ones).
//! So a group's events are held until its end and only then decoded — or dropped. The whole
//! group is already in the binlog when it is read, so holding adds no wait; it bounds memory by
//! spilling large groups to a file (a 1M-row transaction flows through about 100 MB on disk).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use mysql_common::binlog::consts::BinlogVersion;
use mysql_common::binlog::events::{Event, FormatDescriptionEvent};

/// Events of one group, in order.
pub struct Held {
    mem: Vec<Event>,
    mem_bytes: usize,
    limit: usize,
    dir: PathBuf,
    spill: Option<Spill>,
}

struct Spill {
    path: PathBuf,
    out: BufWriter<File>,
    /// Byte offset of each event in the file.
    offsets: Vec<u64>,
    end: u64,
    fde: FormatDescriptionEvent<'static>,
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn event_bytes(ev: &Event) -> usize {
    ev.data().len() + 64
}

impl Held {
    /// Holds up to `limit` bytes in memory; beyond, everything goes to a file in `dir`.
    pub fn new(limit: usize, dir: &Path) -> Self {
        Held {
            mem: Vec::new(),
            mem_bytes: 0,
            limit,
            dir: dir.to_path_buf(),
            spill: None,
        }
    }

    /// Events held.
    pub fn len(&self) -> usize {
        match &self.spill {
            Some(s) => s.offsets.len(),
            None => self.mem.len(),
        }
    }

    /// Whether the group went to disk.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    pub fn push(&mut self, ev: Event) -> std::io::Result<()> {
        if self.spill.is_none() {
            self.mem_bytes += event_bytes(&ev);
            self.mem.push(ev);
            if self.mem_bytes <= self.limit {
                return Ok(());
            }
            self.start_spill()?;
            return Ok(());
        }
        self.write(&ev)
    }

    fn start_spill(&mut self) -> std::io::Result<()> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("cdc-enricher-{}-{n}.spill", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let Some(first) = self.mem.first() else {
            return Ok(());
        };
        tracing::debug!(path = %path.display(), "a large transaction is held in a spill file");
        self.spill = Some(Spill {
            fde: first.fde().clone(),
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            offsets: Vec::new(),
            end: 0,
        });
        for ev in std::mem::take(&mut self.mem) {
            self.write(&ev)?;
        }
        self.mem_bytes = 0;
        Ok(())
    }

    fn write(&mut self, ev: &Event) -> std::io::Result<()> {
        let Some(s) = self.spill.as_mut() else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(ev.data().len() + 32);
        ev.write(BinlogVersion::Version4, &mut buf)?;
        s.out.write_all(&(buf.len() as u32).to_le_bytes())?;
        s.out.write_all(&buf)?;
        s.offsets.push(s.end);
        s.end += 4 + buf.len() as u64;
        Ok(())
    }

    /// Keeps the first `n` events (a `ROLLBACK TO SAVEPOINT` drops what came after it).
    pub fn truncate(&mut self, n: usize) -> std::io::Result<()> {
        match self.spill.as_mut() {
            None => {
                self.mem.truncate(n);
                self.mem_bytes = self.mem.iter().map(event_bytes).sum();
            }
            Some(s) if n < s.offsets.len() => {
                s.out.flush()?;
                s.end = s.offsets[n];
                s.offsets.truncate(n);
                s.out.get_ref().set_len(s.end)?;
                s.out.seek(SeekFrom::Start(s.end))?;
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// The held events in order, from memory or read back from the spill file.
    pub fn into_events(
        mut self,
    ) -> std::io::Result<Box<dyn Iterator<Item = std::io::Result<Event>> + Send + Sync>> {
        let Some(mut s) = self.spill.take() else {
            return Ok(Box::new(std::mem::take(&mut self.mem).into_iter().map(Ok)));
        };
        s.out.flush()?;
        let mut file = s.out.get_ref().try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Box::new(SpillReader {
            input: BufReader::with_capacity(1 << 20, file),
            left: s.offsets.len(),
            spill: s,
        }))
    }
}

struct SpillReader {
    input: BufReader<File>,
    left: usize,
    /// Kept so that the file is removed once read.
    spill: Spill,
}

impl Iterator for SpillReader {
    type Item = std::io::Result<Event>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.read_one())
    }
}

impl SpillReader {
    fn read_one(&mut self) -> std::io::Result<Event> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        self.input.read_exact(&mut buf)?;
        // The header's size must match what was written (the reader trusts it).
        let size = buf
            .get(9..13)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if size != Some(buf.len()) {
            return Err(bad("spill file: an event's size does not match its header"));
        }
        Event::read(&self.spill.fde, &buf[..])
    }
}
