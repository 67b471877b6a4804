"""What the notebooks run: their parameters as papermill gives them (``parameters``), one experiment and its
cached artefacts (``experiment``), a saved SAE opened with its model and text (``runs``) and the tables of the
studies (``tables``). The top of the library: may import
every room but figures."""
