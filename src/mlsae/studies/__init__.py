"""What the notebooks run: one experiment's validated parameters and its cached artefacts (``experiment``) and
the tables of the studies (``tables``). The top of the library: may import every room but figures."""
