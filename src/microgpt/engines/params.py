"""Named views of flat parameter and gradient buffers, shared by the engines that keep them (numpy, fused)."""


class NamedViews:
    """Needs `self.params` and `self.grads`: name -> (rows, cols) views into the flat buffers."""

    def weights(self):
        """Name -> a copy of the (rows, cols) array."""
        return {name: view.copy() for name, view in self.params.items()}

    def gradients(self):
        """Name -> a copy of the gradient left by the last loss_and_grads."""
        return {name: view.copy() for name, view in self.grads.items()}

    def load_weights(self, weights):
        for name, view in self.params.items():
            view[...] = weights[name]
