//! Keeping idle CPUs awake while latency is measured.
//!
//! On these VMs an idle CPU sleeps deeply, and every round trip then pays
//! tens of microseconds of wake-up; results split into two clusters.
//! Holding `/dev/cpu_dma_latency` open with 0 forbids deep idle states until
//! the file is closed, which the guard does on drop.

use std::{fs::File, io::Write as _};

pub struct CpuWake {
    _file: Option<File>,
}

impl CpuWake {
    pub fn hold() -> Self {
        let file = File::options()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .and_then(|mut f| f.write_all(&0i32.to_ne_bytes()).map(|()| f));
        match file {
            Ok(f) => Self { _file: Some(f) },
            Err(err) => {
                eprintln!("note: cannot hold /dev/cpu_dma_latency ({err}); latency may be noisier");
                Self { _file: None }
            }
        }
    }
}
