"""What every converter receives: the fitted pipeline, its IR, the schema, a sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from edgefleet.converters.ir import ModelIR, read_pipeline
from edgefleet.edge.schema import FeatureSchema


@dataclass(frozen=True)
class ConversionSource:
    pipeline: Any
    schema: FeatureSchema
    family: str
    # A few representative input rows (converters that trace shapes need one).
    sample: npt.NDArray[np.float32] = field(repr=False)

    @cached_property
    def ir(self) -> ModelIR:
        return read_pipeline(self.pipeline)
