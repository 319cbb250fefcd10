//! burn records written to and read from files directly, in the format of burn's
//! `BinBytesRecorder<FullPrecisionSettings>` (bincode), without holding the whole record's
//! bytes in memory; and an optimizer's per-parameter state converted for writing one
//! parameter at a time, so that its host copies never all exist at once.
//!
//! A checkpoint written through `BinBytesRecorder` held the run's state twice more in host
//! memory (every tensor as a host item, then all of it as bytes): on a 7B model, about 145 GB
//! beside the training state (README "Known limits").
//!
//! Hand-written rather than burn's `BinFileRecorder` because that recorder owns the file
//! (gmt hashes each file as it is written for the checkpoint's manifest) and converts a
//! record to its item all at once.

use core::cell::RefCell;
use core::marker::PhantomData;
use std::io::{self, Read, Write};

use burn::module::ParamId;
use burn::record::{BinBytesRecorder, BurnRecord, FullPrecisionSettings, Record};
use burn::tensor::backend::Backend;
use serde::ser::{Error as _, Serialize, Serializer};

/// The precision checkpoints are written in: f32 floats (bf16 tensors widen exactly).
pub(crate) type Settings = FullPrecisionSettings;

/// The recorder whose format (and metadata) the files have.
type Format = BinBytesRecorder<Settings>;

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard() // burn's own (`record::recorder::bin_config`)
}

/// Writes `item`, the item of a record of backend `B`, as a record file.
pub(crate) fn write_item<B: Backend, I: Serialize>(
    item: I,
    mut writer: &mut dyn Write,
) -> io::Result<()> {
    let record = BurnRecord::<I, B>::new::<Format>(item);
    bincode::serde::encode_into_std_write(record, &mut writer, bincode_config())
        .map(drop)
        .map_err(|e| match e {
            bincode::error::EncodeError::Io { inner, .. } => inner,
            other => io::Error::other(other.to_string()),
        })
}

/// Reads a record file (written by [`write_item`], or by `BinBytesRecorder`).
pub(crate) fn read_record<B: Backend, R: Record<B>>(
    mut reader: impl Read,
    device: &B::Device,
) -> Result<R, String> {
    let record: BurnRecord<R::Item<Settings>, B> =
        bincode::serde::decode_from_std_read(&mut reader, bincode_config())
            .map_err(|e| e.to_string())?;
    Ok(R::from_item(record.item, device))
}

/// A record keyed by parameter (burn's `HashMap<ParamId, T>`: an optimizer's state) that
/// serializes as its item, converting each entry to its item only when that entry is
/// written. It serializes once: the entries are consumed.
pub(crate) struct ItemsOneByOne<M, B> {
    entries: RefCell<Option<M>>,
    backend: PhantomData<B>,
}

impl<M, B> ItemsOneByOne<M, B> {
    pub(crate) fn new(entries: M) -> Self {
        Self {
            entries: RefCell::new(Some(entries)),
            backend: PhantomData,
        }
    }
}

impl<M, T, B> Serialize for ItemsOneByOne<M, B>
where
    M: IntoIterator<Item = (ParamId, T)>,
    M::IntoIter: ExactSizeIterator,
    T: Record<B>,
    B: Backend,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let entries = (self.entries.borrow_mut().take())
            .ok_or_else(|| S::Error::custom("a record's entries were already written"))?;
        // As burn's `Record` for `HashMap<ParamId, T>` makes its item: a map from the ids'
        // strings to the entries' items (the map's length first, which bincode needs).
        serializer.collect_map(
            (entries.into_iter())
                .map(|(id, entry)| (id.serialize(), entry.into_item::<Settings>())),
        )
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::module::{Module, Param};
    use burn::optim::adaptor::OptimizerAdaptor;
    use burn::optim::{GradientsParams, Optimizer};
    use burn::record::{BinBytesRecorder, Recorder};
    use burn::tensor::{Tensor, TensorData};
    use gmt_core::{FusedAdamW, GmtConfig, GmtRecordItem};

    use super::*;

    type B = Autodiff<NdArray>;
    type Optim = gmt_core::GmtOptimizer<OptimizerAdaptor<FusedAdamW, Net<B>, B>, Net<B>, B>;
    type OptimRecord = <Optim as Optimizer<Net<B>, B>>::Record;

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        weight: Param<Tensor<B, 2>>,
        bias: Param<Tensor<B, 1>>,
    }

    fn values(n: usize, phase: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + phase).sin()).collect()
    }

    /// GMT around FusedAdamW after two steps of `net`'s parameters (or of `weight` alone).
    fn optimizer_record(both: bool) -> OptimRecord {
        let device = Default::default();
        let vector = |phase| {
            Tensor::<NdArray, 1>::from_data(TensorData::new(values(4, phase), [4]), &device)
        };
        let matrix = |phase| {
            Tensor::<NdArray, 2>::from_data(TensorData::new(values(12, phase), [3, 4]), &device)
        };
        let net = Net::<B> {
            weight: Param::from_tensor(Tensor::from_inner(matrix(0.0)).require_grad()),
            bias: Param::from_tensor(Tensor::from_inner(vector(1.0)).require_grad()),
        };
        let mut optim = GmtConfig::new(0.3)
            .init(FusedAdamW::new(0.9, 0.999, 1e-8, 0.01).init(), &net)
            .unwrap();
        let mut net = net;
        for step in 0..2 {
            let mut grads = GradientsParams::new();
            grads.register(net.weight.id, matrix(2.0 + step as f32));
            if both {
                grads.register(net.bias.id, vector(3.0 + step as f32));
            }
            net = optim.step(1e-2, net, grads);
        }
        optim.to_record()
    }

    fn streamed(record: OptimRecord) -> Vec<u8> {
        let mut bytes = Vec::new();
        let item = GmtRecordItem::new(ItemsOneByOne::<_, B>::new(record.inner), record.state);
        write_item::<B, _>(item, &mut bytes).unwrap();
        bytes
    }

    /// One entry's item, encoded: items have no equality of their own.
    fn encoded<T: Record<B>>(entry: T) -> Vec<u8> {
        bincode::serde::encode_to_vec(entry.into_item::<Settings>(), bincode_config()).unwrap()
    }

    #[test]
    fn streamed_records_are_burns_bytes() {
        // One parameter: a map of one entry has one order, so the bytes must be burn's own.
        let record = optimizer_record(false);
        assert_eq!(record.inner.len(), 1);
        let burn = BinBytesRecorder::<Settings>::default()
            .record(record.clone(), ())
            .unwrap();
        assert_eq!(streamed(record), burn);
    }

    #[test]
    fn streamed_records_read_back_entry_for_entry() {
        let record = optimizer_record(true);
        assert_eq!(record.inner.len(), 2);
        let bytes = streamed(record.clone());
        let device = Default::default();
        let back: OptimRecord = read_record(bytes.as_slice(), &device).unwrap();
        // burn's reader takes the streamed file, and ours burn's.
        let by_burn: OptimRecord = BinBytesRecorder::<Settings>::default()
            .load(bytes, &device)
            .unwrap();
        let burn_bytes = BinBytesRecorder::<Settings>::default()
            .record(record.clone(), ())
            .unwrap();
        let from_burn: OptimRecord = read_record(burn_bytes.as_slice(), &device).unwrap();
        for other in [back, by_burn, from_burn] {
            assert_eq!(other.state, record.state);
            assert_eq!(other.inner.len(), 2);
            for (id, entry) in &record.inner {
                assert_eq!(encoded(other.inner[id].clone()), encoded(entry.clone()));
            }
        }
    }

    #[test]
    fn a_record_that_is_not_one_is_an_error() {
        let device = Default::default();
        let read = read_record::<B, OptimRecord>(&b"not a record"[..], &device);
        assert!(read.is_err());
    }
}
