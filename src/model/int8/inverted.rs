//! The inverted residual block of MobileNetV2 and EfficientNet-Lite0 in an int8
//! network. In: a group of images' activations, channels last. Out: the block's output
//! for each: the 1 × 1 expansion and projection in int8 ([`Conv`]), the depthwise
//! convolution in f32 ([`Depthwise`]), the input added where the block keeps its shape.

use super::depthwise::Depthwise;
use super::{Act, Conv, ConvAlgo, Isa};
use crate::error::{Error, Result};
use crate::model::layers::ConvBn;

/// MobileNetV2's block: pointwise convolutions in int8, the depthwise one in f32.
pub(super) struct InvertedResidual {
    expand: Option<Conv>,
    depthwise: Depthwise,
    project: Conv,
    /// Whether the block adds its input to its output.
    residual: bool,
}

impl InvertedResidual {
    pub(super) fn new(convs: &[ConvBn], residual: bool, algo: ConvAlgo) -> Result<Self> {
        let odd = || {
            Error::Usage(
                "int8: an inverted residual block is not expand, depthwise, project".into(),
            )
        };
        let (project, rest) = convs.split_last().ok_or_else(odd)?;
        let (depthwise, expand) = rest.split_last().ok_or_else(odd)?;
        if !depthwise.depthwise() || expand.len() > 1 {
            return Err(odd());
        }
        Ok(Self {
            // The block's input is the previous block's linear output.
            expand: expand
                .first()
                .map(|c| Conv::new(c, algo, true))
                .transpose()?,
            depthwise: Depthwise::new(depthwise)?,
            project: Conv::new(project, algo, false)?,
            residual,
        })
    }

    pub(super) fn forward(&self, isa: Isa, xs: Vec<Act>) -> Vec<Act> {
        let expanded = self.expand.as_ref().map(|e| e.forward(isa, &xs));
        let hidden: Vec<Act> = expanded
            .as_deref()
            .unwrap_or(&xs)
            .iter()
            .map(|x| self.depthwise.forward(isa, x))
            .collect();
        let mut ys = self.project.forward(isa, &hidden);
        if self.residual {
            for (y, x) in ys.iter_mut().zip(&xs) {
                y.data.iter_mut().zip(&x.data).for_each(|(v, x)| *v += x);
            }
        }
        ys
    }
}
