//! Where a model's parts live when its layers are split over several
//! devices of one host, pipeline style: the embedding on the first device,
//! the final norm and the head on the last, the layers in contiguous groups
//! balanced by their bytes. The residual stream crosses a device boundary
//! once per group; every weight, cache and capture of a layer stays on its
//! layer's device.

use std::ops::Range;

use candle_core::Device;

use super::{ModelError, Result};

/// The devices of a model and which of them holds each layer.
#[derive(Clone, Debug)]
pub struct Placement {
    devices: Vec<Device>,
    /// layer -> index into `devices`; never decreasing.
    layer_device: Vec<usize>,
}

/// Bytes of the parts a split balances (each layer taken as equal).
#[derive(Clone, Copy, Debug)]
pub struct PartBytes {
    pub embed: usize,
    pub layer: usize,
    pub head: usize,
}

impl Placement {
    /// Every part on one device.
    pub fn single(device: &Device, n_layers: usize) -> Self {
        Self {
            devices: vec![device.clone()],
            layer_device: vec![0; n_layers],
        }
    }

    /// Layers over `devices` in contiguous groups, so that each device holds
    /// about the same bytes counting the embedding on the first and the
    /// head on the last: layer i goes to the device whose share of the
    /// whole model its middle falls in.
    pub fn balanced(devices: &[Device], n_layers: usize, bytes: PartBytes) -> Result<Self> {
        if devices.is_empty() {
            return Err(ModelError::Invalid("no device to load the model on".into()));
        }
        let k = devices.len();
        let total = (bytes.embed + n_layers * bytes.layer + bytes.head).max(1) as f64;
        let layer_device = (0..n_layers)
            .map(|i| {
                let middle = bytes.embed as f64 + (i as f64 + 0.5) * bytes.layer as f64;
                ((middle / total * k as f64) as usize).min(k - 1)
            })
            .collect();
        Ok(Self {
            devices: devices.to_vec(),
            layer_device,
        })
    }

    /// The device of the embedding (and of token ids, masks built before
    /// the first layer).
    pub fn first(&self) -> &Device {
        &self.devices[0]
    }

    /// The device of the final norm and the head (and so of the logits).
    pub fn last(&self) -> &Device {
        &self.devices[self.devices.len() - 1]
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// Index into [`Self::devices`] of layer `i`'s device.
    pub fn layer_index(&self, layer: usize) -> usize {
        self.layer_device.get(layer).copied().unwrap_or(0)
    }

    /// The device of layer `i`.
    pub fn of_layer(&self, layer: usize) -> &Device {
        &self.devices[self.layer_index(layer)]
    }

    /// Whether the model spans more than one device.
    pub fn is_split(&self) -> bool {
        self.devices.len() > 1
    }

    /// Each device with the layers it holds (empty where it holds none).
    pub fn groups(&self) -> Vec<(usize, Range<usize>)> {
        (0..self.devices.len())
            .map(|d| {
                let start = self.layer_device.partition_point(|&x| x < d);
                let end = self.layer_device.partition_point(|&x| x <= d);
                (d, start..end)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(n: usize) -> Vec<Device> {
        vec![Device::Cpu; n]
    }

    #[test]
    fn equal_layers_without_embedding_split_evenly() {
        let bytes = PartBytes {
            embed: 0,
            layer: 10,
            head: 0,
        };
        let p = Placement::balanced(&cpus(2), 30, bytes).unwrap();
        assert_eq!(p.groups(), vec![(0, 0..15), (1, 15..30)]);
        let p = Placement::balanced(&cpus(4), 8, bytes).unwrap();
        assert_eq!(p.groups(), vec![(0, 0..2), (1, 2..4), (2, 4..6), (3, 6..8)]);
    }

    #[test]
    fn the_embedding_and_head_count_on_their_devices() {
        // 10 layers of 10 bytes, a 40-byte embedding, no separate head: 140
        // bytes, 70 each; the embedding leaves the first device room for 3 layers.
        let bytes = PartBytes {
            embed: 40,
            layer: 10,
            head: 0,
        };
        let p = Placement::balanced(&cpus(2), 10, bytes).unwrap();
        assert_eq!(p.groups(), vec![(0, 0..3), (1, 3..10)]);
        // A 40-byte head on the last device as well: even again.
        let p = Placement::balanced(&cpus(2), 10, PartBytes { head: 40, ..bytes }).unwrap();
        assert_eq!(p.groups(), vec![(0, 0..5), (1, 5..10)]);
        assert!(p.is_split());
        assert_eq!(p.layer_index(4), 0);
        assert_eq!(p.layer_index(5), 1);
    }

    #[test]
    fn one_device_holds_everything_and_none_is_refused() {
        let p = Placement::single(&Device::Cpu, 3);
        assert!(!p.is_split());
        assert_eq!(p.groups(), vec![(0, 0..3)]);
        assert!(Placement::balanced(
            &[],
            3,
            PartBytes {
                embed: 1,
                layer: 1,
                head: 1
            }
        )
        .is_err());
        // More devices than layers: some hold none, the head is on the last.
        let p = Placement::balanced(
            &cpus(3),
            1,
            PartBytes {
                embed: 0,
                layer: 1,
                head: 0,
            },
        )
        .unwrap();
        assert_eq!(p.groups(), vec![(0, 0..0), (1, 0..1), (2, 1..1)]);
    }
}
