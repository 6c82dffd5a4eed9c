//! Writing generated images: all files or none.
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::{ImageFormat, RgbImage};

/// Encodes `images` as PNG into `dir/0.png .. dir/{n-1}.png`. Each file is written to a hidden
/// temporary name and renamed into place; on any failure the files already placed are removed,
/// so a failed run leaves no partial output.
pub fn write_pngs(dir: &Path, images: &[RgbImage]) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let mut written = Vec::with_capacity(images.len());
    for (index, image) in images.iter().enumerate() {
        let path = dir.join(format!("{index}.png"));
        if let Err(err) = write_png_atomically(&path, image) {
            for done in &written {
                let _ = fs::remove_file(done);
            }
            return Err(err);
        }
        written.push(path);
    }
    Ok(written)
}

fn write_png_atomically(path: &Path, image: &RgbImage) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| -> Result<()> {
        let file =
            fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut writer = BufWriter::new(file);
        image
            .write_to(&mut writer, ImageFormat::Png)
            .with_context(|| format!("cannot encode {}", path.display()))?;
        let file = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_numbered_pngs_that_decode_to_the_same_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/out");
        let a = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 80, y as u8 * 100, 7]));
        let paths = write_pngs(&out, &[a.clone(), a.clone()]).unwrap();
        assert_eq!(paths, vec![out.join("0.png"), out.join("1.png")]);
        let back = image::open(&paths[1]).unwrap().to_rgb8();
        assert_eq!(back, a);
        let leftovers: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn a_failed_write_removes_the_files_already_written() {
        let dir = tempfile::tempdir().unwrap();
        // `1.png` is a non-empty directory: the rename onto it fails after 0.png was placed.
        fs::create_dir_all(dir.path().join("1.png/blocker")).unwrap();
        let img = RgbImage::new(2, 2);
        assert!(write_pngs(dir.path(), &[img.clone(), img]).is_err());
        assert!(!dir.path().join("0.png").exists());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("1.png")]);
    }
}
