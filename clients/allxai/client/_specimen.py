"""A specimen's images in ClassifySpecimen batches, and their answers joined into one result."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator

from allxai.client import _results as r
from allxai.client._messages import cell_result, check_alpha, image_message
from allxai.v1 import diagnosis_pb2 as pb


def _review_key(cell: r.ClassifyResult) -> tuple[bool, float]:
    """Where a cell stands in the review order: outside the training domain first, then least confident."""
    return (cell.in_domain is not False, cell.confidence)


class SpecimenBatches:
    """Splits a specimen into ClassifySpecimen requests and joins their answers into one result.

    A batch holds at most ``batch_size`` images and about ``max_bytes`` of image data, since the gateway
    limits both. Images are read (paths) and batched lazily: only the batch in flight (and the image
    that opens the next) is in memory, not the whole specimen (2,000 BMPs are over a gigabyte). Every
    batch after the first asks for the exact model version that answered the first, so a model rolled
    out mid-specimen cannot split one summary across two models.
    Iterate for the requests; hand each response to :meth:`add` before taking the next request.
    """

    def __init__(
        self,
        images: Iterable[r.ImageInput],
        spec: pb.ModelSpec,
        specimen_id: str,
        batch_size: int,
        max_bytes: int,
        image_ids: Iterable[str] | None = None,
        alpha: float | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._alpha = check_alpha(alpha)
        self._images = iter(images)
        self._ids: Iterator[str | None] = iter(image_ids) if image_ids is not None else itertools.repeat(None)
        self._batch_size = batch_size
        self._max_bytes = max_bytes
        self._spec = spec
        self._specimen_id = specimen_id
        self._responses: list[pb.ClassifySpecimenResponse] = []
        #: Index of the first image of the batch in flight, for errors that name an image.
        self.offset = 0

    def _batches(self) -> Iterator[list[pb.Image]]:
        batch: list[pb.Image] = []
        size = 0
        for image in self._images:
            message = image_message(image, next(self._ids, None))
            if batch and (len(batch) >= self._batch_size or size + len(message.data) > self._max_bytes):
                yield batch
                batch, size = [], 0
            batch.append(message)
            size += len(message.data)
        # The last batch is never empty, unless the whole specimen is: that still makes one call, so the
        # gateway's own answer (INVALID_ARGUMENT) says what it means.
        yield batch

    def __iter__(self) -> Iterator[pb.ClassifySpecimenRequest]:
        for batch in self._batches():
            yield pb.ClassifySpecimenRequest(
                images=batch, model_spec=self._spec, specimen_id=self._specimen_id, alpha=self._alpha
            )
            self.offset += len(batch)

    def add(self, response: pb.ClassifySpecimenResponse) -> None:
        """Take the answer to the request just yielded."""
        if not self._responses:
            self._spec = pb.ModelSpec(name=response.model.name, version=response.model.version)
        self._responses.append(response)

    def result(self) -> r.SpecimenResult:
        """All batches' cells in order, with the counts, blast fraction and review order of them all.

        The blast fraction of the whole is over the cells every batch counted (those inside the training
        domain); the specimen needs review when any batch did, or when no cell at all could be counted.
        """
        cells: list[r.ClassifyResult] = []
        counts: dict[str, int] = {}
        blasts = counted = out_of_domain = ambiguous = 0
        reasons: list[tuple[int, int, str]] = []
        orders: list[list[tuple[tuple[bool, float], int]]] = []
        for response in self._responses:
            offset = len(cells)
            cells += [
                cell_result(c.classification, response.model, response.request_id, c.image_id)
                for c in response.cells
            ]
            summary = response.summary
            for count in summary.counts:
                counts[count.label] = counts.get(count.label, 0) + count.count
            batch_counted = summary.counted
            if not batch_counted and not any(c.classification.HasField("in_domain") for c in response.cells):
                # No domain check, so every cell counts; a gateway from before the field leaves it 0.
                batch_counted = len(response.cells)
            # The fraction came from an integer count of this batch's counted cells; round() recovers it.
            blasts += round(summary.blast_fraction * batch_counted)
            counted += batch_counted
            out_of_domain += summary.out_of_domain
            ambiguous += summary.ambiguous
            if summary.needs_review:
                reason = summary.review_reason or "the gateway asks for a review"
                reasons.append((offset + 1, len(cells), reason))
            # The gateway's order: cells outside the domain first, then the least confident.
            orders.append([(_review_key(cells[offset + i]), offset + i) for i in summary.review_first])
        if len(self._responses) > 1:
            # Each batch's reason speaks of its own cells: say which.
            review_reason = "; ".join(f"cells {first}-{last}: {why}" for first, last, why in reasons)
        else:
            review_reason = "; ".join(why for _, _, why in reasons)
        if cells and not counted and not reasons:
            review_reason = "no cell could be judged: none lies inside the training domain"
        return r.SpecimenResult(
            cells=cells,
            counts=counts,
            blast_fraction=blasts / counted if counted else 0.0,
            review_first=[index for _, index in heapq.merge(*orders)],
            specimen_id=self._specimen_id,
            out_of_domain=out_of_domain,
            ambiguous=ambiguous,
            counted=counted,
            needs_review=bool(review_reason),
            review_reason=review_reason,
        )
