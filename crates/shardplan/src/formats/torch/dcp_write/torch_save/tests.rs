//! `torch.save` archives built and checked byte by byte.

use super::*;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn whole(item: &TorchSaveItem, data: &[u8]) -> Vec<u8> {
    let mut out = item.prefix().to_vec();
    out.extend_from_slice(data);
    out.extend_from_slice(&item.suffix(crc32fast::hash(data)));
    out
}

/// Reads the directory the way a zip reader does, from the end record,
/// and returns (name, local header offset, size, crc, data offset).
fn directory(z: &[u8]) -> Vec<(String, u64, u64, u32, u64)> {
    let eocd = z.len() - 22;
    assert_eq!(u32_at(z, eocd), 0x0605_4b50);
    let locator = eocd - 20;
    assert_eq!(u32_at(z, locator), 0x0706_4b50);
    let z64 = u64_at(z, locator + 8) as usize;
    assert_eq!(u32_at(z, z64), 0x0606_4b50);
    let entries = u64_at(z, z64 + 32);
    let mut at = u64_at(z, z64 + 48) as usize;
    let mut out = Vec::new();
    for _ in 0..entries {
        assert_eq!(u32_at(z, at), 0x0201_4b50);
        let crc = u32_at(z, at + 16);
        let mut size = u64::from(u32_at(z, at + 24));
        let name_len = u16_at(z, at + 28) as usize;
        let extra_len = u16_at(z, at + 30) as usize;
        let mut offset = u64::from(u32_at(z, at + 42));
        let name = String::from_utf8(z[at + 46..at + 46 + name_len].to_vec()).unwrap();
        let mut x = at + 46 + name_len;
        if extra_len > 0 {
            assert_eq!(u16_at(z, x), 1);
            x += 4;
            if size == 0xFFFF_FFFF {
                size = u64_at(z, x);
                x += 16;
            }
            if offset == 0xFFFF_FFFF {
                offset = u64_at(z, x);
            }
        }
        let o = offset as usize;
        assert_eq!(u32_at(z, o), 0x0403_4b50);
        let data = o + 30 + u16_at(z, o + 26) as usize + u16_at(z, o + 28) as usize;
        out.push((name, offset, size, crc, data as u64));
        at += 46 + name_len + extra_len;
    }
    out
}

#[test]
fn records_are_in_torch_order_aligned_and_with_correct_crcs() {
    let item = TorchSaveItem::build("archive", DType::BF16, &[3, 5]).unwrap();
    let data: Vec<u8> = (0..30u8).collect();
    let z = whole(&item, &data);
    assert_eq!(z.len() as u64, item.len());
    let dir = directory(&z);
    let names: Vec<&str> = dir.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "archive/data.pkl",
            "archive/.format_version",
            "archive/.storage_alignment",
            "archive/byteorder",
            "archive/data/0",
            "archive/version",
            "archive/.data/serialization_id"
        ]
    );
    for (name, _, size, crc, data_at) in &dir {
        assert_eq!(data_at % 64, 0, "{name}");
        let bytes = &z[*data_at as usize..(*data_at + *size) as usize];
        assert_eq!(crc32fast::hash(bytes), *crc, "{name}");
    }
    assert_eq!(dir[4].4, item.data_offset());
    assert_eq!(&z[dir[4].4 as usize..][..30], &data[..]);
    assert_eq!(&z[dir[5].4 as usize..][..2], b"3\n");
}

#[test]
fn the_same_input_gives_the_same_bytes() {
    let a = TorchSaveItem::build("archive", DType::F32, &[4]).unwrap();
    let b = TorchSaveItem::build("archive", DType::F32, &[4]).unwrap();
    assert_eq!(a.prefix(), b.prefix());
    assert_eq!(a.suffix(7), b.suffix(7));
    assert_ne!(a.suffix(7), a.suffix(8));
    assert_eq!(a.suffix(7).len(), a.suffix(8).len());
}

#[test]
fn data_pkl_matches_what_torch_save_writes() {
    // The bytes of `archive/data.pkl` that torch 2.15 wrote for a 0-dim
    // int64 tensor (conformance case tp2_dp2, item `step`).
    let expect: &[u8] = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00((X\x07\x00\x00\x00storageq\x01ctorch\nLongStorage\nq\x02X\x01\x00\x00\x000q\x03X\x03\x00\x00\x00cpuq\x04K\x01tq\x05QK\x00))\x89ccollections\nOrderedDict\nq\x06)Rq\x07tq\x08Rq\x09.";
    assert_eq!(data_pkl(DType::I64, &[], 1), expect);
    // And for a (16, 8) float32 chunk.
    let pkl = data_pkl(DType::F32, &[16, 8], 128);
    let tail: &[u8] = b"K\x80tq\x05QK\x00K\x10K\x08\x86q\x06K\x08K\x01\x86q\x07\x89";
    assert!(pkl.windows(tail.len()).any(|w| w == tail));
}

#[test]
fn strides_treat_empty_dimensions_as_one() {
    assert_eq!(contiguous_strides(&[]), Vec::<u64>::new());
    assert_eq!(contiguous_strides(&[7]), [1]);
    assert_eq!(contiguous_strides(&[3, 0, 5]), [5, 5, 1]);
    assert_eq!(contiguous_strides(&[2, 3, 4]), [12, 4, 1]);
}

#[test]
fn large_data_takes_zip64_fields_everywhere_they_are_needed() {
    // 5 GiB of u8: no bytes are made, only the header arithmetic.
    let len = 5u64 << 30;
    let item = TorchSaveItem::build("archive", DType::U8, &[len]).unwrap();
    let prefix = item.prefix();
    assert_eq!(item.data_offset() % 64, 0);
    // The local header of data/0: zip64 extra with both sizes, then FB.
    let h = item.records[4].header_offset as usize;
    assert_eq!(u32_at(prefix, h), 0x0403_4b50);
    let name_len = u16_at(prefix, h + 26) as usize;
    let x = h + 30 + name_len;
    assert_eq!((u16_at(prefix, x), u16_at(prefix, x + 2)), (1, 16));
    assert_eq!((u64_at(prefix, x + 4), u64_at(prefix, x + 12)), (len, len));
    assert_eq!(&prefix[x + 20..x + 22], b"FB");

    let suffix = item.suffix(0xdead_beef);
    assert_eq!(suffix.len() as u64, item.suffix_len());
    // The descriptor has 64-bit sizes.
    assert_eq!(u32_at(&suffix, 0), 0x0807_4b50);
    assert_eq!(u32_at(&suffix, 4), 0xdead_beef);
    assert_eq!((u64_at(&suffix, 8), u64_at(&suffix, 16)), (len, len));
    // The records after the data start beyond 4 GiB: their local headers
    // carry their offset, and their data is still aligned.
    let start = item.data_offset() + len;
    let version_at = start + 24;
    let v = 24;
    assert_eq!(u32_at(&suffix, v), 0x0403_4b50);
    let name_len = u16_at(&suffix, v + 26) as usize;
    let x = v + 30 + name_len;
    assert_eq!((u16_at(&suffix, x), u16_at(&suffix, x + 2)), (1, 8));
    assert_eq!(u64_at(&suffix, x + 4), version_at);
    let extra_len = u16_at(&suffix, v + 28) as u64;
    assert_eq!((version_at + 30 + name_len as u64 + extra_len) % 64, 0);

    // The directory, read through the end records with offsets made
    // relative to the suffix.
    let eocd = suffix.len() - 22;
    assert_eq!(u32_at(&suffix, eocd + 16), u32::MAX, "directory offset");
    let z64 = u64_at(&suffix, eocd - 20 + 8) - start;
    let dir_at = u64_at(&suffix, z64 as usize + 48) - start;
    let mut at = dir_at as usize;
    let mut seen = Vec::new();
    for _ in 0..7 {
        assert_eq!(u32_at(&suffix, at), 0x0201_4b50);
        let size = u32_at(&suffix, at + 24);
        let name_len = u16_at(&suffix, at + 28) as usize;
        let extra_len = u16_at(&suffix, at + 30) as usize;
        let offset = u32_at(&suffix, at + 42);
        let name = String::from_utf8(suffix[at + 46..at + 46 + name_len].to_vec()).unwrap();
        seen.push((name, size == u32::MAX, offset == u32::MAX, extra_len));
        at += 46 + name_len + extra_len;
    }
    assert_eq!(at as u64, z64);
    let flags: Vec<(bool, bool, usize)> = seen.iter().map(|s| (s.1, s.2, s.3)).collect();
    assert_eq!(
        flags,
        [
            (false, false, 0),
            (false, false, 0),
            (false, false, 0),
            (false, false, 0),
            (true, false, 20),
            (false, true, 12),
            (false, true, 12),
        ]
    );
    assert_eq!(item.len(), start + suffix.len() as u64);
}

#[test]
fn lengths_that_overflow_are_refused() {
    assert_eq!(
        TorchSaveItem::build("archive", DType::F64, &[1 << 62]),
        Err(ItemError::Overflow)
    );
    assert_eq!(
        TorchSaveItem::build("archive", DType::U8, &[u64::MAX, 2]),
        Err(ItemError::Overflow)
    );
    assert!(TorchSaveItem::build("", DType::U8, &[1]).is_err());
}
