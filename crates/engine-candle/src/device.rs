use candle_core::Device;

/// A `--device` value that cannot be used in this build.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected `cpu` or `cuda[:N]`")]
    Unknown(String),
    #[error("device `{0}` needs a build with the `cuda` feature")]
    NotBuilt(String),
    #[error("cannot open device `{name}`")]
    Open {
        name: String,
        #[source]
        source: candle_core::Error,
    },
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device, DeviceError> {
    let ordinal = match name {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => return Err(DeviceError::Unknown(other.to_owned())),
        },
    };
    if !cfg!(feature = "cuda") {
        return Err(DeviceError::NotBuilt(name.to_owned()));
    }
    Device::new_cuda(ordinal).map_err(|source| DeviceError::Open {
        name: name.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
        assert!(matches!(parse_device("tpu"), Err(DeviceError::Unknown(_))));
        assert!(matches!(
            parse_device("cuda:x"),
            Err(DeviceError::Unknown(_))
        ));
        if !cfg!(feature = "cuda") {
            assert!(matches!(
                parse_device("cuda:1"),
                Err(DeviceError::NotBuilt(_))
            ));
        }
    }
}
