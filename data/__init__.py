"""glotta.data: webdataset text shards, manifests, import, language id, the demo corpus."""
from glotta.data.manifest import Manifest, ShardInfo
from glotta.data.shards import Sample, ShardWriter, iter_samples, list_shards

__all__ = ["Manifest", "Sample", "ShardInfo", "ShardWriter", "iter_samples", "list_shards"]
