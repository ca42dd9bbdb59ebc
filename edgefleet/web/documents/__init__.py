"""The dashboard's documents, one module per area (docs/architecture.md §10);
:class:`edgefleet.web.dashboard.Dashboard` puts the areas together."""
