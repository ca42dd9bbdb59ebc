"""The monitor store's parts (docs/architecture.md §7): one module per kind of record;
:class:`edgefleet.central.monitor.store.MonitorStore` puts them together."""
