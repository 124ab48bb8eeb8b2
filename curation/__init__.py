"""Data curation for self-supervised pretraining, after DINOv2's LVD-142M pipeline.

The whole pipeline, images in and a curated ``datasets.Dataset`` out, is :func:`curation.pipeline.curate`
(CLI: ``dinov2-curate``). Its building blocks work on embedding matrices (numpy arrays or Arrow files
read in blocks, :mod:`curation.store`): embeddings go in and row indices come out.

* :mod:`curation.inputs`: folders, file lists and ``datasets.Dataset`` image columns.
* :mod:`curation.embed`: batched, resumable embedding into Arrow shards with any DINOv2 /
  transformers / TorchScript model.
* :mod:`curation.pipeline`, :mod:`curation.config`, :mod:`curation.report`, :mod:`curation.cli`:
  the pipeline, its config, its report and its command line.

* :mod:`curation.index`: FAISS wrapper for cosine k-NN (Flat / IVF / HNSW, chosen
  automatically by size, GPU optional).
* :mod:`curation.dedup`: k-NN graph, self-dedup and decontamination against
  evaluation sets (DINOv2 App. A.3).
* :mod:`curation.retrieval`: sample-based and cluster-based retrieval of pool
  images near seed datasets (DINOv2 App. A.4).
* :mod:`curation.kmeans`: hierarchical k-means with resampling (Vo et al. 2024).
* :mod:`curation.sampling`: balanced top-down hierarchical sampling and
  cluster-balance statistics.

Every step that drops items returns a :class:`RemovalRecord` giving the reason,
the matched item and the similarity for each dropped item.
"""

from .config import CurationConfig
from .dedup import (
    DECONTAMINATION_THRESHOLD,
    SELF_DEDUP_THRESHOLD,
    DecontaminationResult,
    DedupResult,
    KnnGraph,
    RemovalRecord,
    check_partition,
    concat_removals,
    decontaminate,
    deduplicate,
    SimilarityEdges,
    knn_edges,
    knn_graph,
    threshold_components,
)
from .embed import EmbeddingResult, embed_images, load_embeddings, load_model
from .inputs import ImageSet, load_image_set
from .index import (
    EmbeddingIndex,
    SearchResult,
    build_index,
    default_ivf_params,
    l2_normalize,
    resolve_index_type,
)
from .kmeans import (
    HierarchicalKMeansResult,
    KMeansLevel,
    KMeansResult,
    assign_to_centroids,
    hierarchical_kmeans,
    kmeans,
)
from .retrieval import (
    ClusterRetrievalResult,
    SampleRetrievalResult,
    cluster_based_retrieval,
    sample_based_retrieval,
)
from .pipeline import CurationResult, curate, push_curated
from .balance import BalanceStats, cluster_balance_stats, gini, normalized_entropy, size_entropy
from .sampling import SamplingResult, hierarchical_sampling, water_fill
from .store import ArraySource, ArrowEmbeddings, EmbeddingSource, SubsetSource, as_source

__all__ = [
    "ArraySource",
    "ArrowEmbeddings",
    "CurationConfig",
    "CurationResult",
    "EmbeddingResult",
    "EmbeddingSource",
    "ImageSet",
    "SimilarityEdges",
    "SubsetSource",
    "as_source",
    "curate",
    "embed_images",
    "knn_edges",
    "load_embeddings",
    "load_image_set",
    "load_model",
    "push_curated",
    "BalanceStats",
    "ClusterRetrievalResult",
    "DECONTAMINATION_THRESHOLD",
    "DecontaminationResult",
    "DedupResult",
    "EmbeddingIndex",
    "HierarchicalKMeansResult",
    "KMeansLevel",
    "KMeansResult",
    "KnnGraph",
    "RemovalRecord",
    "SELF_DEDUP_THRESHOLD",
    "SampleRetrievalResult",
    "SamplingResult",
    "SearchResult",
    "assign_to_centroids",
    "build_index",
    "check_partition",
    "cluster_balance_stats",
    "cluster_based_retrieval",
    "concat_removals",
    "decontaminate",
    "deduplicate",
    "default_ivf_params",
    "gini",
    "hierarchical_kmeans",
    "hierarchical_sampling",
    "kmeans",
    "knn_graph",
    "l2_normalize",
    "normalized_entropy",
    "resolve_index_type",
    "sample_based_retrieval",
    "size_entropy",
    "threshold_components",
    "water_fill",
]
