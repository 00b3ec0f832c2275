//! `files.bin`: what a generation placed (one [`Placed`] per managed file), in a compact binary
//! form read at every `status` and drift check — parsing the same records as JSON took longer
//! than stat'ing the 20,000 files they describe.
//!
//! Layout (little-endian): the magic `comfix-files 1\n`, a `u32` count, then per file: `u16`
//! path length and the path (UTF-8), `u64` size, `i64` mtime and change time (ns), `u64` inode,
//! a flags byte (`1`: a BLAKE3 digest follows, 32 bytes; `2`: a symlink target follows, `u16`
//! length and the target). Homes realized before it have `files.json` (the same records as JSON),
//! still read.

use super::link::Placed;

const MAGIC: &[u8] = b"comfix-files 1\n";
const HAS_DIGEST: u8 = 1;
const HAS_LINK: u8 = 2;

/// The records of `placed`; `None` when one cannot be written in this form (a path or link
/// target over 64 KiB, a digest that is not 64 hex digits): the caller writes JSON instead.
pub(super) fn encode(placed: &[Placed]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + placed.len() * 96);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(placed.len()).ok()?.to_le_bytes());
    for file in placed {
        put_str(&mut out, &file.path)?;
        out.extend_from_slice(&file.size.to_le_bytes());
        out.extend_from_slice(&i64::try_from(file.mtime_ns).ok()?.to_le_bytes());
        out.extend_from_slice(&i64::try_from(file.ctime_ns).ok()?.to_le_bytes());
        out.extend_from_slice(&file.ino.to_le_bytes());
        let flags = file.digest.as_ref().map_or(0, |_| HAS_DIGEST)
            | file.link.as_ref().map_or(0, |_| HAS_LINK);
        out.push(flags);
        if let Some(digest) = &file.digest {
            out.extend_from_slice(blake3::Hash::from_hex(digest).ok()?.as_bytes());
        }
        if let Some(link) = &file.link {
            put_str(&mut out, link)?;
        }
    }
    Some(out)
}

/// The records in `bytes`; `None` when they are not whole (the caller treats the generation as
/// one without records, as for an unreadable `files.json`).
pub(super) fn decode(bytes: &[u8]) -> Option<Vec<Placed>> {
    let mut r = Reader(bytes.strip_prefix(MAGIC)?);
    let count = u32::from_le_bytes(r.take()?) as usize;
    let mut placed = Vec::with_capacity(count.min(bytes.len() / 40));
    for _ in 0..count {
        let path = r.string()?;
        let size = u64::from_le_bytes(r.take()?);
        let mtime_ns = i64::from_le_bytes(r.take()?) as i128;
        let ctime_ns = i64::from_le_bytes(r.take()?) as i128;
        let ino = u64::from_le_bytes(r.take()?);
        let [flags] = r.take()?;
        let digest = match flags & HAS_DIGEST {
            0 => None,
            _ => Some(blake3::Hash::from_bytes(r.take()?).to_hex().to_string()),
        };
        let link = match flags & HAS_LINK {
            0 => None,
            _ => Some(r.string()?),
        };
        placed.push(Placed {
            path,
            size,
            mtime_ns,
            ino,
            ctime_ns,
            digest,
            link,
        });
    }
    r.0.is_empty().then_some(placed)
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    out.extend_from_slice(&u16::try_from(s.len()).ok()?.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Some(())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn string(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take()?) as usize;
        let (head, rest) = self.0.split_at_checked(len)?;
        self.0 = rest;
        String::from_utf8(head.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Placed> {
        vec![
            Placed {
                path: "ComfyUI/main.py".into(),
                size: 1234,
                mtime_ns: 1_796_676_896_807_929_988,
                ino: 6_848_561,
                ctime_ns: 1_796_676_896_807_929_999,
                digest: Some(blake3::hash(b"main").to_hex().to_string()),
                link: None,
            },
            Placed {
                path: "models/checkpoints/ü.safetensors".into(),
                size: 80,
                mtime_ns: 0,
                ino: 0,
                ctime_ns: 0,
                digest: None,
                link: Some("/store/paths/abc-ü.safetensors".into()),
            },
        ]
    }

    #[test]
    fn records_read_back_as_written_and_damage_reads_as_none() {
        let placed = sample();
        let bytes = encode(&placed).expect("encodable");
        assert_eq!(decode(&bytes), Some(placed.clone()));
        assert_eq!(decode(&encode(&[]).expect("empty")), Some(Vec::new()));
        for cut in [0, 3, MAGIC.len() + 2, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), None, "trailing bytes");
        let mut not_hex = placed;
        not_hex[0].digest = Some("not a digest".into());
        assert_eq!(encode(&not_hex), None);
    }

    #[test]
    fn a_home_from_before_the_binary_records_is_read_from_its_json() {
        let tmp = tempfile::tempdir().expect("tmp");
        let home = super::super::Home::new(tmp.path()).expect("home");
        let dir = home.generation_dir(1);
        std::fs::create_dir_all(&dir).expect("dir");
        let placed = sample();
        std::fs::write(
            dir.join("files.json"),
            serde_json::to_vec(&placed).expect("json"),
        )
        .expect("files.json");
        assert_eq!(home.read_files(1), placed);
        // The binary records win where both are.
        let newer = vec![placed[1].clone()];
        std::fs::write(dir.join("files.bin"), encode(&newer).expect("bin")).expect("files.bin");
        assert_eq!(home.read_files(1), newer);
    }
}
