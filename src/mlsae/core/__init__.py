"""Infrastructure every room uses: where files live and how they are written (``paths``), the one cache
(``cache``), the Hugging Face hub asked carefully (``hub``), progress bars and library noise (``progress``),
seeding (``seeding``) and every preset (``presets``). Imports nothing else of mlsae."""
