//! A buffer for a request body whose length is known only once it has been read (chunked, or inflated on the
//! way in), or for a large tensor packed from JSON text, which holds its contents once while it grows.
//!
//! A vector grown by doubling holds up to three times its contents while it is reallocated, and frames kept in
//! a list and joined at the end twice (the allocator keeps the freed frames): a 256 KiB gzip body that inflates
//! to 255 MiB grew the server by 500 MiB before its handler refused it. Past a small size, this buffer is
//! anonymous memory grown with `mremap` (on Linux), which moves pages instead of copying them, so the server
//! holds the body once, and the frozen body is that memory itself (no last copy into one contiguous buffer).

use bytes::Bytes;
use memmap2::MmapMut;

/// Bodies up to this size stay in an ordinary vector (a mapping is a system call or two).
pub(crate) const SMALL: usize = 1 << 20;

/// A growing request body.
#[derive(Default)]
pub struct BodyBuffer {
    small: Vec<u8>,
    /// Once the body outgrows [`SMALL`]: the mapping and how much of it is filled.
    mapped: Option<(MmapMut, usize)>,
}

impl BodyBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with room for `capacity` bytes (mapped at once past the small size).
    pub fn with_capacity(capacity: usize) -> std::io::Result<Self> {
        if capacity <= SMALL {
            return Ok(BodyBuffer { small: Vec::with_capacity(capacity), mapped: None });
        }
        Ok(BodyBuffer { small: Vec::new(), mapped: Some((MmapMut::map_anon(capacity)?, 0)) })
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.mapped.as_ref().map_or(self.small.len(), |(_, len)| *len)
    }

    /// Whether nothing has been added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `data`; an error only when the system refuses the memory.
    #[inline]
    pub fn extend(&mut self, data: &[u8]) -> std::io::Result<()> {
        let need = self.len().checked_add(data.len()).ok_or(std::io::ErrorKind::OutOfMemory)?;
        if self.mapped.is_none() {
            if need <= SMALL {
                self.small.extend_from_slice(data);
                return Ok(());
            }
            let mut map = MmapMut::map_anon(room_for(need))?;
            map[..self.small.len()].copy_from_slice(&self.small);
            self.mapped = Some((map, self.small.len()));
            self.small = Vec::new();
        }
        let Some((map, len)) = self.mapped.as_mut() else { unreachable!("mapped above") };
        if need > map.len() {
            grow(map, room_for(need))?;
        }
        map[*len..need].copy_from_slice(data);
        *len = need;
        Ok(())
    }

    /// The body as one `Bytes`, without a copy.
    pub fn freeze(self) -> Bytes {
        match self.mapped {
            None => Bytes::from(self.small),
            Some((map, len)) => Bytes::from_owner(Filled { map, len }),
        }
    }
}

/// The room to map for `need` bytes: the next power of two, so a body read in many frames is remapped only
/// a logarithmic number of times.
fn room_for(need: usize) -> usize {
    need.checked_next_power_of_two().unwrap_or(need)
}

/// Grows `map` to `room` bytes: moved by the kernel on Linux, copied elsewhere.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // the one way to grow a mapping without copying it; see SAFETY.
fn grow(map: &mut MmapMut, room: usize) -> std::io::Result<()> {
    // SAFETY: nothing borrows the mapping while it moves (`map` is borrowed mutably here), and the pages it
    // held keep their contents at the new address.
    unsafe { map.remap(room, memmap2::RemapOptions::new().may_move(true)) }
}

#[cfg(not(target_os = "linux"))]
fn grow(map: &mut MmapMut, room: usize) -> std::io::Result<()> {
    let mut larger = MmapMut::map_anon(room)?;
    larger[..map.len()].copy_from_slice(map);
    *map = larger;
    Ok(())
}

/// The filled part of a mapping, owned by the `Bytes` that views it.
struct Filled {
    map: MmapMut,
    len: usize,
}

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the frames, the frozen body is them joined, across the switch to a mapping and its growth.
        #[test]
        fn the_frozen_body_is_the_frames_joined(sizes in proptest::collection::vec(0usize..700_000, 0..8), seed: u8) {
            let mut buffer = BodyBuffer::new();
            let mut expected = Vec::new();
            for (i, size) in sizes.into_iter().enumerate() {
                let frame: Vec<u8> = (0..size).map(|j| (j as u8).wrapping_mul(31).wrapping_add(seed ^ i as u8)).collect();
                buffer.extend(&frame).unwrap();
                expected.extend_from_slice(&frame);
                prop_assert_eq!(buffer.len(), expected.len());
            }
            let frozen = buffer.freeze();
            prop_assert_eq!(&frozen[..], &expected[..]);
        }
    }

    #[test]
    fn a_large_body_is_mapped_and_grows_in_place_of_a_copy() {
        let mut buffer = BodyBuffer::new();
        let frame = vec![7u8; 300_000];
        for _ in 0..20 {
            buffer.extend(&frame).unwrap();
        }
        assert!(buffer.mapped.is_some() && buffer.small.is_empty());
        let frozen = buffer.freeze();
        assert_eq!(frozen.len(), 6_000_000);
        assert!(frozen.iter().all(|&b| b == 7));
        // Slices share the mapping.
        let tail = frozen.slice(5_999_990..);
        drop(frozen);
        assert_eq!(&tail[..], &[7u8; 10]);
    }
}
