// A PNG decompression bomb for tests: a valid 1-bit grayscale PNG of zeros whose IDAT is a
// hand-written deflate stream of 258-byte back-references, so a huge image takes little space.
// Included by `tests/hostile.rs` (as a module) and by the decoder's unit tests (with `include!`,
// so no inner attributes or `//!` comments here).

/// A valid 1-bit grayscale PNG of zeros whose IDAT is a hand-written deflate stream of
/// 258-byte back-references: 11000x11000 takes ~95 KB but would decode to 121 MP.
pub fn zero_png(width: u32, height: u32) -> Vec<u8> {
    let row_bytes = 1 + width.div_ceil(8) as u64; // filter byte + packed pixels
    let raw_len = row_bytes * u64::from(height);
    let mut bits = BitWriter::default();
    bits.put(1, 1); // BFINAL
    bits.put(1, 2); // BTYPE = fixed Huffman
    bits.put_code(0x30, 8); // literal 0
    let mut remaining = raw_len - 1;
    while remaining >= 258 {
        bits.put_code(0xc5, 8); // length code 285: 258 bytes
        bits.put_code(0, 5); // distance code 0: distance 1
        remaining -= 258;
    }
    for _ in 0..remaining {
        bits.put_code(0x30, 8);
    }
    bits.put_code(0, 7); // end of block (256)
    let mut zlib = vec![0x78, 0x01];
    zlib.extend(bits.finish());
    let adler = (((raw_len % 65521) as u32) << 16) | 1;
    zlib.extend(adler.to_be_bytes());

    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([1, 0, 0, 0, 0]); // bit depth 1, grayscale, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(b"IHDR", &ihdr), (b"IDAT", &zlib), (b"IEND", &Vec::new())] {
        png.extend((data.len() as u32).to_be_bytes());
        let start = png.len();
        png.extend(kind);
        png.extend(data);
        let crc = crc32(&png[start..]);
        png.extend(crc.to_be_bytes());
    }
    png
}

#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    count: u32,
}

impl BitWriter {
    /// Appends `len` bits of `value`, least significant first (deflate's data order).
    fn put(&mut self, value: u64, len: u32) {
        self.acc |= value << self.count;
        self.count += len;
        while self.count >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.count -= 8;
        }
    }

    /// Appends a Huffman code, most significant bit first.
    fn put_code(&mut self, code: u64, len: u32) {
        for i in (0..len).rev() {
            self.put((code >> i) & 1, 1);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
