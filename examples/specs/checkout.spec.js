// Adds an item to the cart and pays with the saved test card.
const { test, expect } = require("appwright");

test("checks out a single item", async ({ device }) => {
  await device.getByText("Catalogue").tap();
  await device.getByText("Blue mug").tap();
  await device.getByText("Add to cart").tap();
  await device.getById("cart-button").tap();
  await expect(device.getByText("1 item")).toBeVisible();
  await device.getByText("Pay now").tap();
  await expect(device.getByText("Order confirmed")).toBeVisible();
});
