// AppWright spec: login
const { test, expect } = require("appwright");

test("login", async ({ device }) => {
  await device.getByText("Welcome").waitFor({ state: "visible" });
  await expect(device.getByText("Welcome")).toBeVisible();
});
