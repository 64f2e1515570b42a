"""A test-only method with its own model and config, added to the package from these files alone (see
`tests/test_methods.py::test_a_new_method_with_its_own_model_is_new_files_only`)."""
